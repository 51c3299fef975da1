"""config/gunicorn.py's server mechanics: no control socket and a clean preload."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.processes import base_environ, gunicorn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(40)]

# As root, file modes do not stop writes; a read-only bind mount in a private mount namespace does.
# `sh -c ... exec` and unshare exec (no fork), so the process started is still the master.
READ_ONLY_BIND = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


@pytest.fixture
def read_only_home() -> Iterator[tuple[Path, list[str]]]:
    """(a HOME directory, a command prefix that makes it read-only for the command)."""
    home = Path(tempfile.mkdtemp(prefix="read-only-home-"))
    if os.geteuid() == 0:
        prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", READ_ONLY_BIND, str(home)]
    else:
        home.chmod(0o555)
        prefix = []
    probe = subprocess.run([*prefix, sys.executable, "-c", "import pathlib, sys; pathlib.Path(sys.argv[1], 'x').touch()",
                            str(home)], capture_output=True, timeout=10, check=False)
    try:
        if probe.returncode == 0 or b"Errno" not in probe.stderr:
            pytest.skip(f"cannot make a read-only HOME here: {probe.stderr[-200:]!r}")
        yield home, prefix
    finally:
        home.chmod(0o755)
        shutil.rmtree(home, ignore_errors=True)


def test_server_starts_with_a_read_only_home(tmp_path: Path, read_only_home: tuple[Path, list[str]]) -> None:
    """Gunicorn 27's control socket ($HOME/.gunicorn/gunicorn.ctl) stays disabled.

    With it enabled, Gunicorn 27.0.1 logs `Control server error: [Errno 30] Read-only file system`.
    """
    home, prefix = read_only_home
    env = base_environ(tmp_path, GUNICORN_WORKERS="1", DJANGO_LOG_LEVEL="INFO") | {"HOME": str(home)}
    with gunicorn(tmp_path, env=env, command_prefix=prefix) as server:
        assert not server.wait_for_log("ontrol s", timeout=1.0)  # the control server starts after the workers
        logs = server.logs()
    assert "Booting worker" in logs and "Traceback" not in logs
    assert not (home / ".gunicorn").exists()


def fd_targets(pid: int) -> list[str]:
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:  # closed while listing
            continue
    return targets


def test_a_worker_collects_garbage_without_walking_what_the_master_imported(tmp_path: Path) -> None:
    """pre_fork freezes the preloaded master's objects (Django and the application): a worker's
    collector tracks only what the worker made since, so its full collections stay short."""
    env = base_environ(tmp_path, GUNICORN_WORKERS="1")
    with gunicorn(tmp_path, env=env, app="tests.support.gc_report:application") as server:
        for _ in range(50):  # the worker's own objects: requests answered, caches filled
            assert httpx.get(server.url + "/health", timeout=5).status_code == 200
        report = httpx.get(server.url + "/gc-report", timeout=5).json()
    assert report["frozen"] > 20_000  # Django and its apps, imported in the master
    assert report["tracked"] < report["frozen"] / 4


def test_preloaded_master_hands_no_database_connection_to_workers(tmp_path: Path) -> None:
    """preload_app imports Django in the master; pre_fork closes what the import opened.

    tests/support/db_at_import.py opens a database connection at import time. Without the pre_fork
    hook in config/gunicorn.py, the master and every worker hold the SQLite file open (with
    PostgreSQL: one socket shared by all workers).
    """
    env = base_environ(tmp_path, GUNICORN_WORKERS="2")
    database = env["DATABASE_URL"].removeprefix("sqlite:///")
    with gunicorn(tmp_path, env=env, app="tests.support.db_at_import:application") as server:
        workers = server.wait_for_workers(2)
        master = fd_targets(server.process.pid)
        logs = server.logs()
        assert f"db_at_import: connection opened in pid {server.process.pid}" in logs  # preloaded, in the master
        assert logs.count("db_at_import:") == 1
        assert len(workers) == 2
        assert database not in master
        # The listeners only: the application's port and the metrics port.
        assert len([target for target in master if target.startswith("socket:")]) == 2
        for pid in workers:
            assert database not in fd_targets(pid)
