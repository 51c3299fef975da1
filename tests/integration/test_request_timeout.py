"""GUNICORN_TIMEOUT is a real request timeout (R2.3): 504, 408 for a slow body, the worker serves on.

One worker, so "keeps serving others" holds on the very event loop that sits on the timed-out
request. The stock stack has no request timeout at all: the slow request runs to its end.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.processes import PROVIDER_WAITS_FOR_2_S, Server, base_environ, gunicorn
from tests.support.rawhttp import BackgroundGet, connect, get, read_until_close, read_while_trickling

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

TIMEOUT = 2  # GUNICORN_TIMEOUT: also the heartbeat, so not lower on a loaded machine
# How late after the limit an answer may come on a loaded machine: the limit is what is proven.
LATE = 1.0


def one_worker(tmp_path: Path, **env: str) -> dict[str, str]:
    return base_environ(tmp_path, GUNICORN_WORKERS="1", GUNICORN_TIMEOUT=str(TIMEOUT), **PROVIDER_WAITS_FOR_2_S, **env)


@pytest.fixture
def bare_server(tmp_path: Path) -> Iterator[Server]:
    with gunicorn(tmp_path, env=one_worker(tmp_path), app="devtools.asgi_app:timeout_app") as server:
        yield server


def test_slow_request_gets_504_near_the_limit_while_the_worker_serves_others(bare_server: Server) -> None:
    """R2.3: a slow view or upstream call gets 504 at GUNICORN_TIMEOUT; /health answers throughout."""
    started = time.monotonic()
    slow = BackgroundGet(bare_server.port, "/slow?seconds=20")
    slow.start()
    latencies = []
    while time.monotonic() - started < TIMEOUT + 0.5:  # before, at and after the 504
        asked = time.monotonic()
        assert get(bare_server.port, "/health", timeout=5).status == 200
        latencies.append(time.monotonic() - asked)
        time.sleep(0.1)
    slow.join(timeout=10)

    assert slow.response is not None, f"the slow request got no answer: {slow.error!r}"
    assert slow.response.status == 504 and slow.response.body == b"Gateway Timeout"
    assert slow.response.headers.get("connection") == "close"
    assert TIMEOUT <= slow.response.finished_at - started < TIMEOUT + LATE
    assert len(latencies) >= 5 and max(latencies) < 1.0, latencies
    assert get(bare_server.port, "/slow?seconds=0.2").body == b"slept"  # within the limit: untouched


def test_timeout_after_the_response_started_cuts_the_connection(bare_server: Server) -> None:
    """R2.3: no status line can be sent any more; the client sees a truncated body, never a whole one."""
    with connect(bare_server.port) as sock:
        sock.sendall(b"GET /stall?seconds=20 HTTP/1.1\r\nHost: t\r\n\r\n")
        started = time.monotonic()
        response = read_until_close(sock)
    assert (response.status, response.headers["content-length"], response.body) == (200, "10", b"12345")
    assert TIMEOUT <= response.finished_at - started < TIMEOUT + LATE
    assert get(bare_server.port, "/health").status == 200


def test_slow_body_to_django_gets_408(tmp_path: Path) -> None:
    """R2.3 on the production stack: coffee_payment.asgi composes the timeout around Django."""
    with gunicorn(tmp_path, env=one_worker(tmp_path)) as server, connect(server.port) as sock:
        sock.sendall(b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        started = time.monotonic()
        # Far too slow to finish 100 bytes before the limit.
        response = read_while_trickling(sock, itertools.repeat(b"x", 100), interval=0.3)
        assert response.status == 408
        assert response.headers.get("connection") == "close"
        assert TIMEOUT <= response.finished_at - started < TIMEOUT + LATE
        assert json.loads(get(server.port, "/health").body) == {"status": "ok"}
