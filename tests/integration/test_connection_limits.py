"""A worker's connection limit and its file limit, against a real `gunicorn -c config/gunicorn.py`:
beyond GUNICORN_WORKER_CONNECTIONS requests are answered 503, logged (rate-limited) and counted;
out of file descriptors, accepting pauses, logged and counted, and the waiting clients are served
once descriptors are free, not reset."""

from __future__ import annotations

import re
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from coffee_payment.http_protocol import OVERLOAD_LOG_SECONDS
from coffee_payment.listeners import ACCEPT_RETRY_SECONDS, LOG_SECONDS
from devtools.processes import Server, base_environ, gunicorn
from tests.support.rawhttp import BackgroundGet, get

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

LIMIT = 10  # GUNICORN_WORKER_CONNECTIONS' least
FILE_LIMIT = 256  # the worker's RLIMIT_NOFILE, soft and hard: it cannot raise it
IDLE = 400  # connections that send nothing: more than FILE_LIMIT lets one process hold
LATE = 2.0  # how late past a bound an answer may come on a loaded machine


def metric(server: Server, name: str) -> float:
    scraped = httpx.get(server.metrics_url, timeout=10).text
    return sum(float(value) for value in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", scraped, re.MULTILINE))


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections that send nothing (the kernel completes them, accepted or not)."""
    with ExitStack() as stack:
        yield [stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10)) for _ in range(count)]


def log_count(server: Server, text: str) -> int:
    return server.logs().count(text)


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Server]:
    env = base_environ(tmp_path, GUNICORN_WORKERS="1", GUNICORN_WORKER_CONNECTIONS=str(LIMIT), DJANGO_LOG_LEVEL="INFO")
    with gunicorn(tmp_path, env=env) as server:
        yield server


def test_requests_beyond_the_connection_limit_get_503_logged_once_and_counted(limited: Server) -> None:
    started = time.monotonic()
    # uvicorn counts the requester's own connection: LIMIT - 1 others leave no room.
    with idle_connections(limited.port, LIMIT - 1):
        time.sleep(0.2)  # every one accepted
        answers = [get(limited.port, "/v1/order-status/x") for _ in range(20)]
        assert [(a.status, a.body, a.headers["connection"]) for a in answers] == [
            (503, b"Service Unavailable", "close")] * 20
        # Liveness still answers: a busy worker is alive, and a restart would drop every connection.
        assert get(limited.port, "/health").status == 200
    # Room again once they are gone: the request reaches Django (which refuses rawhttp's Host "t").
    assert get(limited.port, "/v1/order-status/x").status == 400
    elapsed = time.monotonic() - started
    # One line per OVERLOAD_LOG_SECONDS at most, saying how many.
    assert 1 <= log_count(limited, "answered 503: ") <= 1 + elapsed // OVERLOAD_LOG_SECONDS
    assert "(20 in the last" in limited.logs() or "(1 in the last" in limited.logs()
    assert "Exceeded concurrency limit" not in limited.logs()
    assert metric(limited, "coffee_http_overload_refusals_total") == 20


@pytest.fixture
def few_files(tmp_path: Path) -> Iterator[Server]:
    def file_limit() -> None:  # in the child, before it execs Gunicorn: inherited by its worker
        resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))

    env = base_environ(tmp_path, GUNICORN_WORKERS="1", DJANGO_LOG_LEVEL="INFO")
    with gunicorn(tmp_path, env=env, preexec_fn=file_limit) as server:
        yield server


def test_out_of_file_descriptors_accepting_pauses_logged_and_counted_and_nobody_is_reset(few_files: Server) -> None:
    started = time.monotonic()
    # The worker said at start that its file limit is short of its connection limit.
    assert few_files.wait_for_log(f"the file limit (RLIMIT_NOFILE) is {FILE_LIMIT}")
    with idle_connections(few_files.port, IDLE):
        assert few_files.wait_for_log("cannot accept a connection: EMFILE", timeout=5)
        waiting = BackgroundGet(few_files.port, "/health", timeout=30)
        waiting.start()
        time.sleep(2 * ACCEPT_RETRY_SECONDS)  # accepting tried again, and failed again, meanwhile
        assert waiting.is_alive()  # in the listen backlog: neither answered nor reset
        freed = time.monotonic()
    # The idle connections closed: within one retry the waiting client is accepted and served.
    waiting.join(timeout=ACCEPT_RETRY_SECONDS + LATE)
    assert waiting.error is None and waiting.response is not None, waiting.error
    assert waiting.response.status == 200
    assert time.monotonic() - freed <= ACCEPT_RETRY_SECONDS + LATE
    elapsed = time.monotonic() - started
    assert log_count(few_files, "cannot accept a connection: EMFILE") <= 1 + elapsed // LOG_SECONDS
    assert metric(few_files, "coffee_worker_accept_errors_total") >= 2
