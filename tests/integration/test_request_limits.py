"""Hostile clients against the production stack: oversized and slow headers, oversized bodies.

One worker, so "other connections are served" holds on the very event loop that is being
attacked. Every sender is bounded in bytes and in time; the server is the real Gunicorn master
with the project's worker and coffee_payment.asgi.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.processes import Server, base_environ, gunicorn
from tests.support.rawhttp import RawResponse, connect, get, read_until_close, read_while_trickling

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HEADER_LIMIT = 32768  # the default GUNICORN_MAX_HEADER_BYTES
BODY_LIMIT = 1048576  # the default GUNICORN_MAX_BODY_BYTES
HEADER_TIMEOUT = 1  # GUNICORN_HEADER_TIMEOUT, short so the slowloris tests are fast
KEEPALIVE = 3
# How late after a limit an answer may come on a loaded machine: the limit is what is proven.
LATE = 1.0
# The server's clock starts at its accept, a moment before the client's connect() returns.
EARLY = 0.05
MIB = 1 << 20
CHUNK = b"a" * 65536


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp("request-limits")
    env = base_environ(tmp_path, GUNICORN_WORKERS="1", GUNICORN_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
                       GUNICORN_KEEPALIVE=str(KEEPALIVE))
    with gunicorn(tmp_path, env=env) as started:
        yield started


def send_header_bytes(sock: socket.socket, *, total: int, deadline: float) -> int:
    """Send a request whose one header value is `total` bytes; stop at an error or the deadline."""
    sent = 0
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: ")
        while sent < total and time.monotonic() < deadline:
            sock.sendall(CHUNK)
            sent += len(CHUNK)
    except OSError:  # the server closed: what a refused client sees once it stops listening
        pass
    return sent


def answer_or_close(sock: socket.socket) -> RawResponse | None:
    """The server's answer, or None if it closed the connection without one."""
    try:
        return read_until_close(sock)
    except (ConnectionError, OSError):
        return None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_responses_carry_no_server_header(server: Server) -> None:
    response = get(server.port, "/health")
    assert response.status == 200
    assert "server" not in response.headers
    assert "date" in response.headers  # uvicorn's other default header is still sent


def test_8_mib_header_is_answered_431_within_a_second_while_another_connection_is_served(server: Server) -> None:
    with connect(server.port) as attacker:
        # Half the limit: a header section in progress on the worker's only event loop.
        attacker.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (HEADER_LIMIT // 2))
        assert get(server.port, "/health", timeout=5).status == 200

        started = time.monotonic()
        sent = send_header_bytes(attacker, total=8 * MIB, deadline=started + 5)
        response = answer_or_close(attacker)
        answered = time.monotonic() - started
    assert answered < 1.0, f"{answered:.2f}s after {sent} more bytes"
    if response is not None:  # a close without an answer is also allowed, but this is what it sends
        assert (response.status, response.body) == (431, b"Request Header Fields Too Large")
        assert response.headers["connection"] == "close"
    assert get(server.port, "/health").status == 200
    assert server.wait_for_log(f"request header section over {HEADER_LIMIT} bytes; answered 431")


@pytest.mark.parametrize("size", [HEADER_LIMIT + 1024, 200_000])
def test_header_section_over_the_limit_in_one_read_is_answered_431(server: Server, size: int) -> None:
    """A section that arrives whole, with its end, in a single read is measured too."""
    head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: "
    with connect(server.port) as sock:
        sock.sendall(head + b"a" * (size - len(head) - 4) + b"\r\n\r\n")
        response = read_until_close(sock)
    assert (response.status, response.body) == (431, b"Request Header Fields Too Large")


def test_pipelined_requests_and_a_body_in_the_same_read_are_served(server: Server) -> None:
    """Counting per read never mistakes a body or the next request for a header section."""
    body = b"x" * (HEADER_LIMIT * 2)
    with connect(server.port) as sock:
        sock.sendall(b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                     + b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answers = b""
        while chunk := sock.recv(65536):  # both answers, then the close the second one asked for
            answers += chunk
    assert answers.count(b"HTTP/1.1 200 OK\r\n") == 2, answers


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The bare test application (devtools/asgi_app.py: /health, /slow, /echo) under the same worker."""
    tmp_path = tmp_path_factory.mktemp("request-limits-bare")
    env = base_environ(tmp_path, GUNICORN_WORKERS="1", GUNICORN_HEADER_TIMEOUT=str(HEADER_TIMEOUT), DJANGO_LOG_LEVEL="INFO")
    with gunicorn(tmp_path, env=env, app="devtools.asgi_app:app") as started:
        yield started


def statuses(answers: bytes) -> list[int]:
    # Every status line, bodies (short, known, no status line in them) between them.
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)]


def read_all(sock: socket.socket) -> bytes:
    answers = b""
    while chunk := sock.recv(65536):
        answers += chunk
    return answers


def test_pipelined_requests_over_the_limit_together_are_each_measured_alone(bare: Server) -> None:
    """Forty 1 KiB requests in one read, the last one still arriving: 40 KiB in all, each well
    under the limit, so every one is answered."""
    request = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * 1000 + b"\r\n\r\n"
    assert len(request) * 40 > HEADER_LIMIT
    with connect(bare.port) as sock:
        sock.sendall(request * 39 + b"GET /health HTTP/1.1\r\nHost: t\r\n")
        time.sleep(0.2)  # the last request's end in a read of its own
        sock.sendall(b"X-Pad: " + b"p" * 1000 + b"\r\nConnection: close\r\n\r\n")
        assert statuses(read_all(sock)) == [200] * 40
    assert "Traceback" not in bare.logs()


@pytest.mark.parametrize("refused", [
    b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (HEADER_LIMIT + 100) + b"\r\n\r\n",  # 431
    b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (HEADER_LIMIT + 100),  # 431, still arriving
    b"NOT-HTTP \x00\x01\r\n\r\n",  # uvicorn's 400
])
def test_a_refusal_after_pipelined_requests_waits_for_their_answers(bare: Server, refused: bytes) -> None:
    """The requests parsed before a refusal are answered, in order, before it: none runs unanswered."""
    body = b"report: made"
    with connect(bare.port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                     + b"GET /slow?seconds=0.5 HTTP/1.1\r\nHost: t\r\n\r\n" + refused)
        answers = read_all(sock)
    assert statuses(answers) == [200, 200, 400 if refused.startswith(b"NOT") else 431], answers[:600]
    assert body in answers and b"slept" in answers
    assert answers.endswith(b"Invalid HTTP request received." if refused.startswith(b"NOT")
                            else b"Request Header Fields Too Large")
    assert "Traceback" not in bare.logs()


def test_worker_memory_stays_bounded_while_four_clients_send_100_mib_headers(server: Server) -> None:
    (pid,) = server.wait_for_workers(1)
    baseline = rss_kib(pid)
    deadline = time.monotonic() + 15
    sent = [0] * 4
    peak = baseline

    def attack(index: int) -> None:
        with connect(server.port) as sock:
            sent[index] = send_header_bytes(sock, total=100 * MIB, deadline=deadline)

    attackers = [threading.Thread(target=attack, args=(i,), daemon=True) for i in range(4)]
    for thread in attackers:
        thread.start()
    while any(thread.is_alive() for thread in attackers) and time.monotonic() < deadline + 1:
        peak = max(peak, rss_kib(pid))
        time.sleep(0.02)
    for thread in attackers:
        thread.join(timeout=5)

    # Each connection holds at most the limit plus one read; 4 x 100 MiB once took 671 MiB.
    assert peak - baseline < 16 * 1024, f"RSS {baseline} -> {peak} KiB while {sent} bytes were sent"
    assert server.worker_pids() == {pid}, "the worker was replaced"
    assert get(server.port, "/health").status == 200


def test_trickled_headers_are_answered_408_and_closed_at_the_header_timeout(server: Server) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        started = time.monotonic()
        # A header line every 0.2 s, for far longer than the timeout allows.
        response = read_while_trickling(sock, (b"X-Line-%d: a\r\n" % n for n in range(50)), interval=0.2)
    assert (response.status, response.body) == (408, b"Request Timeout")
    assert response.headers["connection"] == "close"
    assert HEADER_TIMEOUT - EARLY <= response.finished_at - started < HEADER_TIMEOUT + LATE


def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(server: Server) -> None:
    with connect(server.port) as sock:
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed, with no answer: there was no request
        closed = time.monotonic() - started
    assert HEADER_TIMEOUT - EARLY <= closed < HEADER_TIMEOUT + LATE


def read_chunked_response(sock: socket.socket) -> bytes:
    """One keep-alive response with a chunked body (what /health sends), up to its last chunk."""
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def test_an_idle_keep_alive_connection_is_governed_by_keepalive_not_the_header_timeout(server: Server) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
    with connect(server.port) as sock:
        sock.sendall(request)
        assert read_chunked_response(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(HEADER_TIMEOUT + 0.5)  # idle past the header timeout, within GUNICORN_KEEPALIVE
        sock.sendall(request)
        assert read_chunked_response(sock).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert sock.recv(1024) == b""  # then keep-alive's own timer closes it
        closed = time.monotonic() - started
    assert KEEPALIVE - 0.5 <= closed < KEEPALIVE + LATE


@pytest.mark.parametrize("expect", [b"", b"Expect: 100-continue\r\n"])
def test_declared_body_over_the_limit_is_refused_413_before_it_is_sent(server: Server, expect: bytes) -> None:
    with connect(server.port, timeout=5) as sock:
        sock.sendall(b"POST /v1/pay HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200000000\r\n" + expect + b"\r\n")
        response = read_until_close(sock)  # nothing of the body was sent
    assert (response.status, response.body) == (413, b"Content Too Large")
    assert response.headers["connection"] == "close"
    assert server.wait_for_log("declared a 200000000-byte body (limit 1048576): answered 413")


def test_chunked_body_is_refused_413_as_soon_as_it_passes_the_limit(server: Server) -> None:
    with connect(server.port, timeout=5) as sock:
        sock.sendall(b"POST /v1/pay HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK)
        try:
            for _ in range(BODY_LIMIT // len(CHUNK) + 4):  # a few chunks past the limit, never the end
                sock.sendall(chunk)
        except OSError:
            pass
        response = read_until_close(sock)
    assert (response.status, response.body) == (413, b"Content Too Large")
    assert response.headers["connection"] == "close"
    assert get(server.port, "/health").status == 200


def test_body_of_exactly_the_limit_reaches_the_view(server: Server) -> None:
    """Django's own DATA_UPLOAD_MAX_MEMORY_SIZE agrees: the webhook view reads all of it."""
    body = b"{" + b" " * (BODY_LIMIT - 2) + b"}"
    with connect(server.port, timeout=10) as sock:
        sock.sendall(b"POST /v1/payments/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        response = read_until_close(sock)
    assert response.status == 400
    assert b"notification" in response.body, response.body  # the view's verdict on the content
