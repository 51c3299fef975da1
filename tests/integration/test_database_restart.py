"""A PostgreSQL restart: pooled connections it killed are checked and replaced before use, so no
request after the restart fails on one (Django's CONN_HEALTH_CHECKS with the pool)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import postgres
from tests.support.processes import BIN, base_environ, gunicorn, run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    # A cluster of its own (the suite's must not restart under it), started on the PostgreSQL pass.
    pytest.mark.skipif(not postgres.is_postgres(os.environ.get("DATABASE_URL", "")),
                       reason="the PostgreSQL pass runs it"),
]

CLIENTS = 6
REQUESTS_PER_CLIENT = 3000  # bound; the loop ends on time first
SECONDS_BEFORE, SECONDS_AFTER = 1.0, 2.0


@dataclass
class Outcome:
    started: float
    status: int | None  # None: no answer (connection error, timeout)


def run_load(url: str, *, seconds: float) -> list[Outcome]:
    """CLIENTS keep-alive clients sending requests back to back for `seconds` (bounded in count)."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=10) as http:
            for _ in range(REQUESTS_PER_CLIENT):
                started = time.monotonic()
                if started > deadline:
                    return
                try:
                    status: int | None = http.get(url).status_code
                except httpx.HTTPError:
                    status = None
                with lock:
                    outcomes.append(Outcome(started, status))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 20)
    return outcomes


def test_postgres_restart_under_load_fails_no_request_after_it(tmp_path: Path) -> None:
    with postgres.cluster() as database_url:
        env = base_environ(tmp_path, DATABASE_URL=database_url, GUNICORN_WORKERS="2", DJANGO_LOG_LEVEL="WARNING")
        migrate = run([str(BIN / "python"), "manage.py", "migrate", "--noinput"], env=env)
        assert migrate.returncode == 0, migrate.stderr
        with gunicorn(tmp_path, env=env) as server:
            global LOGS
            # A primary-key read per request: 404 JSON for an order that does not exist.
            url = server.url + "/v1/order-status/no-such-order"
            # Traffic fills each worker's pool; then PostgreSQL restarts with no request in flight,
            # so every pooled connection is dead and still in its pool when traffic resumes.
            before = run_load(url, seconds=SECONDS_BEFORE)
            restart_began = time.monotonic()
            postgres.restart(database_url)
            restart_took = time.monotonic() - restart_began
            after = run_load(url, seconds=SECONDS_AFTER)
            logs = server.logs()

    print(f"requests: {len(before)} before the restart, {len(after)} after; restart took {restart_took:.2f} s")
    assert before and all(o.status == 404 for o in before)
    # Without the check each dead connection failed one request here (500, AdminShutdown).
    assert after and [o.status for o in after if o.status != 404] == []
    assert "terminating connection due to administrator command" not in logs
