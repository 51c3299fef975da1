"""The bench's databases: seeded once, then a fresh copy for every server run.

- `sqlite` (the default): a file in WAL mode, copied per server; connections skip the per-commit
  fsync WAL does not need (synchronous=NORMAL) and take the write lock when a transaction begins
  (transaction_mode=IMMEDIATE), as every SQLite connection of the server does (conf.py).
- `postgres`: a throwaway cluster (devtools/postgres.py: fsync off), one database per server
  made from the seeded one as a template; the server's pool is Django's, as in production.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devtools import postgres
from devtools.processes import BIN, REPO

KINDS = ("sqlite", "postgres")


@dataclass(frozen=True)
class Seeded:
    kind: str
    url: str  # the seeded database: the template of every copy

    def copy(self, directory: Path) -> str:
        """DATABASE_URL of a fresh copy of the seeded database."""
        if self.kind == "sqlite":
            copy = directory / "server.sqlite3"
            shutil.copyfile(self.url.removeprefix("sqlite:///"), copy)
            return f"sqlite:///{copy}"
        name = f"bench_{uuid.uuid4().hex[:12]}"
        postgres.execute(self.url, "postgres", f'CREATE DATABASE "{name}" TEMPLATE "{postgres.DATABASE}"')
        return postgres.with_database(self.url, name)


@contextmanager
def seeded(kind: str, *, tmp: Path, env: dict[str, str], status_orders: int, payment_orders: int) -> Iterator[Seeded]:
    """Migrate and seed (bench/seed.py) the template database; a PostgreSQL cluster lives as long."""
    if kind == "sqlite":
        yield _seed(Seeded(kind, f"sqlite:///{tmp / 'seeded.sqlite3'}"), env=env, status_orders=status_orders,
                    payment_orders=payment_orders)
        return
    with postgres.cluster() as url:
        yield _seed(Seeded(kind, url), env=env, status_orders=status_orders, payment_orders=payment_orders)


def _seed(database: Seeded, *, env: dict[str, str], status_orders: int, payment_orders: int) -> Seeded:
    env = {**env, "DATABASE_URL": database.url}
    for command in (["manage.py", "migrate", "--noinput"],
                    ["-m", "bench.seed", f"--status-orders={status_orders}", f"--payment-orders={payment_orders}"]):
        subprocess.run([str(BIN / "python"), *command], cwd=REPO, env=env, check=True, capture_output=True,
                       timeout=120)
    return database
