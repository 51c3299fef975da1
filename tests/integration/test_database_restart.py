"""PostgreSQL restarts (pg_ctl restart -m fast) under a real Gunicorn: no request fails on a pooled
connection a restart killed, none waits for a connection past DATABASE_WAIT_TIMEOUT, and once the
database is back every request succeeds (coffee_payment/postgresql)."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from coffee_payment.conf_values import DATABASE_CONNECT_TIMEOUT
from devtools import postgres
from devtools.processes import BIN, base_environ, gunicorn, run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.database,
    pytest.mark.timeout(180),
    # A cluster of its own (the suite's must not restart under it), started on the PostgreSQL pass.
    pytest.mark.skipif(not postgres.is_postgres(os.environ.get("DATABASE_URL", "")),
                       reason="the PostgreSQL pass runs it"),
]

CLIENTS = 6
REQUESTS_PER_CLIENT = 5000  # bound; the loop ends on time first
SECONDS_BEFORE, SECONDS_AFTER = 1.0, 2.0
RESTARTS = 10
WAIT_TIMEOUT = 2.0  # DATABASE_WAIT_TIMEOUT of the server under test
REQUEST_TIMEOUT = 30  # GUNICORN_TIMEOUT: the client waits as long as the server lets a request run
# A request waits for a pooled connection at most WAIT_TIMEOUT; then its one libpq operation (the
# connection's check, the query) is bounded by the connect timeout, the longest libpq waits here.
ANSWER_BOUND = WAIT_TIMEOUT + DATABASE_CONNECT_TIMEOUT


@dataclass
class Outcome:
    started: float
    finished: float
    status: int | None  # None: no answer (connection error, timeout)

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def run_load(url: str, *, seconds: float) -> list[Outcome]:
    """CLIENTS keep-alive clients sending requests back to back for `seconds` (bounded in count)."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT + 5) as http:
            for _ in range(REQUESTS_PER_CLIENT):
                started = time.monotonic()
                if started > deadline:
                    return
                try:
                    status: int | None = http.get(url).status_code
                except httpx.HTTPError:
                    status = None
                with lock:
                    outcomes.append(Outcome(started, time.monotonic(), status))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + REQUEST_TIMEOUT + 10)
    return outcomes


def test_postgres_restarts_fail_no_request_after_the_database_is_back(tmp_path: Path) -> None:
    with postgres.cluster() as database_url:
        env = base_environ(tmp_path, DATABASE_URL=database_url, GUNICORN_WORKERS="2", DJANGO_LOG_LEVEL="WARNING",
                           DJANGO_LOG_FORMAT="json", DATABASE_WAIT_TIMEOUT=str(WAIT_TIMEOUT), GUNICORN_TIMEOUT=str(REQUEST_TIMEOUT))
        migrate = run([str(BIN / "python"), "manage.py", "migrate", "--noinput"], env=env)
        assert migrate.returncode == 0, migrate.stderr
        with gunicorn(tmp_path, env=env) as server:
            # A primary-key read per request: 404 JSON for an order that does not exist.
            url = server.url + "/v1/order-status/no-such-order"

            # 1. Traffic fills each worker's pool; PostgreSQL restarts with no request in flight, so
            # every pooled connection is dead and still in its pool when traffic resumes.
            before = run_load(url, seconds=SECONDS_BEFORE)
            postgres.restart(database_url)
            after = run_load(url, seconds=SECONDS_AFTER)
            quiet_logs = server.logs()

            # 2. RESTARTS restarts in the middle of the traffic, SECONDS_BEFORE of it between two.
            windows: list[tuple[float, float]] = []
            with ThreadPoolExecutor(1) as pool:
                loaded = pool.submit(run_load, url, seconds=(SECONDS_BEFORE + 1) * RESTARTS + SECONDS_AFTER)
                for _ in range(RESTARTS):
                    time.sleep(SECONDS_BEFORE)
                    began = time.monotonic()
                    postgres.restart(database_url)
                    windows.append((began, time.monotonic()))
                outcomes = loaded.result(timeout=(SECONDS_BEFORE + 1) * RESTARTS + REQUEST_TIMEOUT + 60)
            logs = server.logs()

    assert before and all(o.status == 404 for o in before)
    # Without the pool's check each dead connection failed one request here (500, AdminShutdown).
    assert after and [o.status for o in after if o.status != 404] == []
    assert "terminating connection due to administrator command" not in quiet_logs

    # A request overlapping a restart may get 503 (for a moment there is no database to answer);
    # each is answered within the pool's bound, and one that starts once the database is back succeeds.
    def overlaps(outcome: Outcome) -> bool:
        return any(outcome.started < ended and outcome.finished > began for began, ended in windows)

    slowest = max(outcomes, key=lambda o: o.seconds)
    failed = [o for o in outcomes if o.status != 404]
    print(f"{RESTARTS} restarts ({', '.join(f'{e - b:.2f}' for b, e in windows)} s): {len(outcomes)} requests, "
          f"{len(failed)} failed, slowest {slowest.seconds:.2f} s (bound {ANSWER_BOUND:g} s)")
    assert outcomes and all(o.status is not None for o in outcomes)
    assert [o.seconds for o in outcomes if o.seconds > ANSWER_BOUND] == []
    assert {o.status for o in failed} <= {503}
    assert [o for o in failed if not overlaps(o)] == []
    later = [o for o in outcomes if o.started >= windows[-1][1]]
    assert later and all(o.status == 404 for o in later)
    # One ERROR line per 503, naming the request (payments/middleware.py), and no other.
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    errors = [line["message"] for line in lines if line["level"] == "ERROR"]
    assert [e for e in errors if not e.startswith("the database could not answer GET")] == []
    assert len(errors) == len(failed)
