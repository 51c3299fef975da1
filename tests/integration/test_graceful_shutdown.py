"""Every way of stopping the master drains (R3.1-R3.6): in-flight requests finish, new ones are refused.

The stop-signal tests run the production stack, `gunicorn -c config/gunicorn.py` serving Django.
A request is held in flight by sending its body to /health over a few seconds: Django's ASGI
handler reads the whole body before it dispatches, and ProbeMiddleware answers /health for any
method, so the 200 comes only after the last byte, sent after the signal.

Against the stock worker (`TEST_WORKER_CLASS=uvicorn_worker.UvicornWorker`) the three stop-signal
tests fail: after SIGTERM and Ctrl+C the connection accepted before the signal is reset
(Kludex/uvicorn#2757); after SIGINT to the master alone new connections are still accepted a second
later (the master sends SIGQUIT, which the stock worker ignores: Kludex/uvicorn-worker#2).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.processes import Server, base_environ, gunicorn, worker_class_under_test
from tests.support.rawhttp import RawResponse, connect, read_until_close, refused_within

pytestmark = [pytest.mark.integration, pytest.mark.timeout(40)]

CHUNKS = [f"chunk-{i:02d};".encode() for i in range(10)]
BODY = b"".join(CHUNKS)
TRICKLE_INTERVAL = 0.27  # 9 chunks after the signal: about 2.4 s in flight
# Far beyond the trickle, so a pass cannot come from the deadline or the master's SIGKILL.
GRACEFUL_TIMEOUT = "10"


class TrickledPost(threading.Thread):
    """POST /health whose body goes out one chunk at a time; the response is read to EOF."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = connect(port)
        head = f"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
        self.sock.sendall(head + CHUNKS[0])
        self.response: RawResponse | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for chunk in CHUNKS[1:]:
                time.sleep(TRICKLE_INTERVAL)
                self.sock.sendall(chunk)
            self.response = read_until_close(self.sock)
        except BaseException as exc:  # reported by the test thread
            self.error = exc
        finally:
            self.sock.close()


@pytest.fixture
def django_server(tmp_path: Path) -> Iterator[Server]:
    env = base_environ(tmp_path, GUNICORN_WORKERS="2", GUNICORN_GRACEFUL_TIMEOUT=GRACEFUL_TIMEOUT,
                       DJANGO_LOG_LEVEL="INFO")
    with gunicorn(tmp_path, env=env, worker_class=worker_class_under_test()) as server:
        yield server


def assert_graceful_stop(server: Server, deliver: Callable[[], None], expect_reason: str) -> str:
    in_flight = TrickledPost(server.port)
    # Accepted by a worker before the signal, its request sent only after it: the connection
    # the stock worker resets.
    quiet = connect(server.port)
    time.sleep(0.3)  # idle workers accept both; the POST's cycle is reading its body

    deliver()
    in_flight.start()
    time.sleep(0.2)
    quiet.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")

    refused_after = refused_within(server.port, limit=1.0)
    quiet_response = read_until_close(quiet)
    quiet.close()
    in_flight.join(timeout=10)

    assert refused_after is not None, "new connections were still accepted 1 s after the signal"
    assert in_flight.error is None, f"in-flight request failed: {in_flight.error!r}\n{server.logs()}"
    assert in_flight.response is not None
    assert (in_flight.response.status, json.loads(in_flight.response.body)) == (200, {"status": "ok"})
    # The responses started during the drain, so keep-alive clients are told the connection ends.
    assert in_flight.response.headers.get("connection") == "close"
    assert (quiet_response.status, json.loads(quiet_response.body)) == (200, {"status": "ok"})
    assert quiet_response.headers.get("connection") == "close"

    last_response = max(in_flight.response.finished_at, quiet_response.finished_at)
    try:
        returncode = server.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"master still running 5 s after the last response\n{server.logs()}")
    exit_delay = time.monotonic() - last_response
    print(f"refused {refused_after:.2f} s after the signal; master exited {exit_delay:.2f} s after the last response")
    assert returncode == 0
    assert exit_delay < 2.0, f"master exited {exit_delay:.2f} s after the last response"

    logs = server.logs()
    assert re.search(rf"Draining \({expect_reason}\): listeners closed, \d+ request\(s\) in flight", logs), logs
    assert "Drain finished" in logs and "Shutting down: Master" in logs
    assert "SIGKILL" not in logs and "WORKER TIMEOUT" not in logs and "forcing exit" not in logs
    return logs


def test_sigterm_to_master_finishes_in_flight_request(django_server: Server) -> None:
    """R3.1, R3.3-R3.6: SIGTERM to the master (what Kubernetes sends)."""
    assert_graceful_stop(django_server, lambda: os.kill(django_server.process.pid, signal.SIGTERM), "received SIGTERM")


def test_sigint_to_master_finishes_in_flight_request(django_server: Server) -> None:
    """R3.2-R3.6: SIGINT to the master alone; the master forwards it to the workers as SIGQUIT, and
    their drain says what the master received."""
    logs = assert_graceful_stop(django_server, lambda: os.kill(django_server.process.pid, signal.SIGINT),
                                "the master received SIGINT")
    assert "SIGQUIT" not in logs


def test_sigquit_to_master_is_named_as_such(django_server: Server) -> None:
    logs = assert_graceful_stop(django_server, lambda: os.kill(django_server.process.pid, signal.SIGQUIT),
                                "the master received SIGQUIT")
    assert "SIGINT" not in logs


def test_sigint_to_process_group_finishes_in_flight_request(django_server: Server) -> None:
    """R3.2-R3.6: Ctrl+C: every process gets SIGINT, and each worker also the master's SIGQUIT."""
    logs = assert_graceful_stop(django_server, lambda: os.killpg(django_server.process.pid, signal.SIGINT),
                                "(the master )?received SIGINT")
    assert "while draining: drain continues" in logs


def test_request_outliving_the_graceful_timeout_is_cancelled_and_logged(tmp_path: Path) -> None:
    """R3.5, R3.7: GUNICORN_GRACEFUL_TIMEOUT bounds the wait; what is left is cancelled, logged, exit 0.

    The worker gives up at 2 s and answers 500, before the master's SIGKILL (2 s later) would drop
    the connection without a word.
    """
    env = base_environ(tmp_path, GUNICORN_WORKERS="1", GUNICORN_GRACEFUL_TIMEOUT="2", DJANGO_LOG_LEVEL="INFO")
    with gunicorn(tmp_path, env=env, app="devtools.asgi_app:app") as server, connect(server.port) as sock:
        sock.sendall(b"GET /slow?seconds=20 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.3)
        signalled = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        response = read_until_close(sock)
        assert response.status == 500
        # Not before the deadline; the upper bound leaves room for a loaded machine.
        assert 2.0 <= response.finished_at - signalled < 3.5
        assert server.process.wait(timeout=5) == 0
        logs = server.logs()
    assert "Drain deadline (2.0s) exceeded: cancelling 1 request(s)" in logs
    assert "SIGKILL" not in logs
