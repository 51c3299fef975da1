"""GUNICORN_MAX_REQUESTS recycling under load loses nothing (R2.4, R2.5, R3.4) and does not disturb /health (R6.5).

Against the stock worker (`TEST_WORKER_CLASS=uvicorn_worker.UvicornWorker`) these fail: every
recycle resets connections accepted but not yet read, and idle keep-alive connections a client is
reusing (benoitc/gunicorn#2567, Kludex/uvicorn#2757); and a recycle that waits longer than
GUNICORN_TIMEOUT is "WORKER TIMEOUT"-aborted by the master with its request lost.
`make bench-recycling` prints the stock figures side by side.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from devtools.loadgen import LoadResult, run_load_sync
from devtools.processes import PROVIDER_WAITS_FOR_2_S, Server, base_environ, gunicorn, worker_class_under_test
from tests.support.rawhttp import BackgroundGet, get

pytestmark = pytest.mark.integration

RECYCLE = re.compile(r"Maximum request limit of \d+ exceeded")


def recycling_environ(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {"GUNICORN_WORKERS": "2", "GUNICORN_GRACEFUL_TIMEOUT": "10", "GUNICORN_KEEPALIVE": "2",
           "DJANGO_LOG_LEVEL": "INFO"}
    return base_environ(tmp_path, **(env | overrides))


def assert_no_request_lost(server: Server, *, rounds: int, seconds: float, min_recycles: int) -> None:
    """Load in both connection modes, `rounds` times; every run must see recycles and no failure.

    A run is `seconds` of load, extended by further slices of `seconds` (three at most) while it
    has seen fewer than `min_recycles` recycles: a machine slowed by other work still gets its
    recycles, and the load stays bounded.
    """
    seen = 0
    report = []
    for round_no in range(rounds):
        for mode in ("close", "keepalive"):
            recycles = 0
            for _ in range(4):
                result: LoadResult = run_load_sync(server.port, mode, duration=seconds, concurrency=16)
                total = len(RECYCLE.findall(server.logs()))
                recycles, seen = recycles + total - seen, total
                report.append(f"round {round_no} {result.summary()}, recycles so far={recycles}")
                summary = "\n".join(report)
                assert result.error_count == 0, summary
                assert result.non_2xx == 0, summary
                if recycles >= min_recycles:
                    break
            assert recycles >= min_recycles, summary
    print("\n".join(report))
    assert server.process.poll() is None, "master died during the load"
    logs = server.logs()
    assert "WORKER TIMEOUT" not in logs and "SIGKILL" not in logs and "Drain deadline" not in logs


@pytest.mark.timeout(150)
def test_recycling_under_load_loses_no_request_in_either_connection_mode(tmp_path: Path) -> None:
    """R2.4, R2.5: max_requests 250 + jitter 100, 16 clients, 3 rounds x 2 modes x 3 s: zero errors, zero non-2xx.

    Three rounds of at least five recycles each mode (about 20 a run here): a pass is not luck.
    """
    env = recycling_environ(tmp_path, GUNICORN_MAX_REQUESTS="250", GUNICORN_MAX_REQUESTS_JITTER="100")
    with gunicorn(tmp_path, env=env, app="devtools.asgi_app:app", worker_class=worker_class_under_test()) as server:
        assert_no_request_lost(server, rounds=3, seconds=3.0, min_recycles=5)


@pytest.mark.timeout(90)
def test_health_answers_while_django_workers_recycle(tmp_path: Path) -> None:
    """R6.5: /health on the production stack stays 200 through worker restarts, in both modes.

    Django answers a few hundred requests a second here, hence a recycle every 25-35 requests.
    """
    env = recycling_environ(tmp_path, GUNICORN_MAX_REQUESTS="25", GUNICORN_MAX_REQUESTS_JITTER="10")
    with gunicorn(tmp_path, env=env, worker_class=worker_class_under_test()) as server:
        assert_no_request_lost(server, rounds=1, seconds=4.0, min_recycles=5)


@pytest.mark.timeout(30)
def test_recycle_waiting_longer_than_the_heartbeat_keeps_its_request(tmp_path: Path) -> None:
    """R2.4: a recycle drain keeps the worker's heartbeat going.

    uvicorn stops calling Gunicorn's heartbeat once its main loop returns, so a recycle that
    waits for a request longer than GUNICORN_TIMEOUT would be "WORKER TIMEOUT"-aborted. The bare
    application has no request timeout, so its /slow outlives GUNICORN_TIMEOUT.
    """
    env = recycling_environ(tmp_path, GUNICORN_WORKERS="1", GUNICORN_TIMEOUT="2", GUNICORN_MAX_REQUESTS="3",
                            **PROVIDER_WAITS_FOR_2_S)
    with gunicorn(tmp_path, env=env, app="devtools.asgi_app:app", worker_class=worker_class_under_test()) as server:
        first_pid = get(server.port, "/health").headers["x-worker-pid"]  # request 1 after the probe
        slow = BackgroundGet(server.port, "/slow?seconds=4")
        slow.start()
        time.sleep(0.2)
        get(server.port, "/health")  # the limit is reached: the drain starts with /slow in flight
        slow.join(timeout=10)
        assert slow.error is None and slow.response is not None, f"the slow request was lost: {slow.error!r}"
        assert (slow.response.status, slow.response.body) == (200, b"slept")
        assert slow.response.headers["x-worker-pid"] == first_pid

        new_pid = first_pid
        deadline = time.monotonic() + 5
        while new_pid == first_pid and time.monotonic() < deadline:
            try:
                new_pid = get(server.port, "/health", timeout=2).headers["x-worker-pid"]
            except OSError:
                time.sleep(0.05)
        assert new_pid != first_pid
        logs = server.logs()
    assert re.search(r"Draining \(max_requests 3 reached\)", logs)
    assert "WORKER TIMEOUT" not in logs
