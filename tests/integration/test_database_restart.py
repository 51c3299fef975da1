"""A PostgreSQL restart (pg_ctl restart -m fast): pooled connections it killed are checked and
replaced before use, so no request fails on one (Django's CONN_HEALTH_CHECKS with the pool)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devtools import postgres
from devtools.processes import BIN, base_environ, gunicorn, run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.database,
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


def test_postgres_restart_fails_no_request_on_a_dead_pooled_connection(tmp_path: Path) -> None:
    with postgres.cluster() as database_url:
        env = base_environ(tmp_path, DATABASE_URL=database_url, GUNICORN_WORKERS="2", DJANGO_LOG_LEVEL="WARNING")
        migrate = run([str(BIN / "python"), "manage.py", "migrate", "--noinput"], env=env)
        assert migrate.returncode == 0, migrate.stderr
        with gunicorn(tmp_path, env=env) as server:
            # A primary-key read per request: 404 JSON for an order that does not exist.
            url = server.url + "/v1/order-status/no-such-order"

            # 1. Traffic fills each worker's pool; PostgreSQL restarts with no request in flight, so
            # every pooled connection is dead and still in its pool when traffic resumes.
            before = run_load(url, seconds=SECONDS_BEFORE)
            restart_began = time.monotonic()
            postgres.restart(database_url)
            quiet_restart = time.monotonic() - restart_began
            after = run_load(url, seconds=SECONDS_AFTER)
            quiet_logs = server.logs()

            # 2. The restart in the middle of the traffic.
            with ThreadPoolExecutor(1) as pool:
                loaded = pool.submit(run_load, url, seconds=SECONDS_BEFORE + SECONDS_AFTER + 1)
                time.sleep(SECONDS_BEFORE)
                restart_began = time.monotonic()
                postgres.restart(database_url)
                restart_ended = time.monotonic()
                outcomes = loaded.result(timeout=60)

    assert before and all(o.status == 404 for o in before)
    # Without the check each dead connection failed one request here (500, AdminShutdown).
    assert after and [o.status for o in after if o.status != 404] == []
    assert "terminating connection due to administrator command" not in quiet_logs

    # Requests in the restart window may fail: for a moment there is no database to answer (and a
    # query in flight when the server terminates its backends fails). After it, none may.
    window = [o for o in outcomes if restart_began <= o.started < restart_ended]
    later = [o for o in outcomes if o.started >= restart_ended]
    print(f"quiet restart {quiet_restart:.2f} s: {len(before)} requests before, {len(after)} after, none failed; "
          f"restart under load {restart_ended - restart_began:.2f} s: {len(window)} requests in it "
          f"({sum(o.status != 404 for o in window)} failed), {len(later)} after")
    assert later and [o.status for o in later if o.status != 404] == []
    # A request the restart fails is told to retry (payments/middleware.py), never a 500.
    assert {o.status for o in window} <= {404, 503}
