"""A throwaway PostgreSQL cluster for the test suite's second pass and the bench.

    python -m devtools.postgres -- pytest [args]
    python -m devtools.postgres --check     # exit 1 with one line when the binaries are missing

initdb into a temporary directory, `pg_ctl start` on a free loopback port (socket directory in the
same temporary directory), run the command with DATABASE_URL pointing at the cluster, and always
stop the cluster and delete the directory, whatever the command did. PostgreSQL refuses to run as
root, so under root the server runs as the `postgres` user (Debian's package creates it) or
`nobody`. The binaries come from `pg_config --bindir` or /usr/lib/postgresql/<version>/bin.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from devtools.processes import free_port

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package "
    "(apt-get install -y postgresql); `make test` runs the suite on SQLite and on PostgreSQL"
)
USER = "coffee"
DATABASE = "coffee"
# Settings for a disposable cluster: durability buys nothing here, speed does.
SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
START_TIMEOUT = 30


class PostgresMissing(Exception):
    pass


def bindir() -> Path:
    candidates = []
    if pg_config := shutil.which("pg_config"):
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
        candidates.append(Path(result.stdout.strip()))

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    raise PostgresMissing(INSTALL_HINT)


def _server_user() -> str | None:
    """Who runs the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresMissing("running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL")


def _run(command: list[str], *, as_user: str | None, timeout: float = 60) -> None:
    prefix = ["runuser", "-u", as_user, "--"] if as_user else []
    result = subprocess.run(prefix + command, capture_output=True, text=True, timeout=timeout, cwd="/")
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")


@contextmanager
def cluster() -> Iterator[str]:
    """A running cluster; yields the DATABASE_URL of its `coffee` database."""
    binaries = bindir()
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="coffee-postgres-"))
    data, sockets, log = root / "data", root / "sockets", root / "postgres.log"
    sockets.mkdir()
    if user:
        entry = pwd.getpwnam(user)
        for path in (root, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    started = False
    try:
        _run([str(binaries / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C",
              "--no-sync", "--no-instructions"], as_user=user)
        port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} {SERVER_OPTIONS}"
        started = True
        _run([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
              "-t", str(START_TIMEOUT), "start"], as_user=user, timeout=START_TIMEOUT + 10)
        url = f"postgres://{USER}@127.0.0.1:{port}/{DATABASE}"
        execute(url, "postgres", f'CREATE DATABASE "{DATABASE}"')
        _running[url] = (binaries, data, user)
        yield url
    finally:
        _running.pop(f"postgres://{USER}@127.0.0.1:{port}/{DATABASE}" if started else "", None)
        if started:
            _stop(binaries, data, user)
        shutil.rmtree(root, ignore_errors=True)


# URL -> (binaries, data directory, server user) of each cluster this process started.
_running: dict[str, tuple[Path, Path, str | None]] = {}


def restart(url: str) -> None:
    """`pg_ctl restart -m fast` a cluster this process started: every connection is terminated,
    and the server accepts connections again when this returns."""
    binaries, data, user = _running[url]
    # -l: the server must not inherit our pipes (the run would wait for their end).
    _run([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(data.parent / "postgres.log"), "-m", "fast", "-w",
          "-t", str(START_TIMEOUT), "restart"], as_user=user, timeout=START_TIMEOUT + 10)


def stop(url: str) -> None:
    """`pg_ctl stop -m fast` a cluster this process started: the database is gone until the cluster's
    end (which then finds nothing to stop)."""
    _stop(*_running[url])


def _stop(binaries: Path, data: Path, user: str | None) -> None:
    for mode in ("fast", "immediate"):
        try:
            _run([str(binaries / "pg_ctl"), "-D", str(data), "-m", mode, "-w", "-t", "20", "stop"],
                 as_user=user, timeout=30)
            return
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            if "does not exist" in str(exc):  # never started: nothing to stop
                return
            print(f"postgres: stop -m {mode} failed: {exc}", file=sys.stderr)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def execute(url: str, database: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(with_database(url, database), autocommit=True, connect_timeout=10) as connection:
        connection.execute(statement)  # type: ignore[arg-type]  # our own literal SQL


def is_postgres(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


@contextmanager
def server_database(tmp_path: Path, *, template: str | None = None) -> Iterator[str]:
    """A DATABASE_URL for a server process started by a test, on the suite's kind of database.

    On PostgreSQL: a fresh database in the suite's cluster, dropped afterwards; else an SQLite file.
    `template`: another such URL (nobody connected to it) whose contents the new database starts with.
    """
    suite = os.environ.get("DATABASE_URL", "")
    if not is_postgres(suite):
        path = tmp_path / "server.sqlite3"
        if template is not None:
            shutil.copyfile(template.removeprefix("sqlite:///"), path)
        yield f"sqlite:///{path}"
        return
    name = f"server_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{urlsplit(template).path.lstrip("/")}"' if template is not None else ""
    execute(suite, "postgres", f'CREATE DATABASE "{name}"{copy}')
    try:
        yield with_database(suite, name)
    finally:
        # FORCE: a server killed mid-request may leave a connection behind.
        execute(suite, "postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


USAGE = "usage: python -m devtools.postgres [--check | -- COMMAND [ARGS]]"


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{USAGE}\n\n{__doc__}")
        return 0
    if argv == ["--check"]:
        try:
            bindir()
        except PostgresMissing as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    command = argv[1:] if argv[:1] == ["--"] else argv
    if not command or argv[0].startswith("-") and argv[0] != "--":
        print(f"{USAGE}\n{f'unknown option {argv[0]!r}' if argv else 'no command given'}", file=sys.stderr)
        return 2
    if shutil.which(command[0]) is None:
        print(f"error: {command[0]!r} is not a command (found neither on PATH nor as a file)", file=sys.stderr)
        return 2
    # SIGTERM (CI cancelling) unwinds like Ctrl+C, so the cluster is stopped either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with cluster() as url:
            return subprocess.run(command, env={**os.environ, "DATABASE_URL": url}).returncode
    except PostgresMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
