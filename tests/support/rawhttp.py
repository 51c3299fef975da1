"""Blocking raw-socket HTTP helpers: tests need byte-level control of timing."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    finished_at: float  # time.monotonic() when the server closed the connection


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_until_close(sock: socket.socket) -> RawResponse:
    """Read one response up to EOF (responses under test all end with a close)."""
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    finished = time.monotonic()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 "):
        raise ConnectionError(f"no HTTP response, got {bytes(data)[:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return RawResponse(int(lines[0].split()[1]), headers, body, finished)


def read_while_trickling(sock: socket.socket, pieces: Iterable[bytes], *, interval: float) -> RawResponse:
    """`read_until_close`, while a thread sends one of `pieces` every `interval` seconds (a slow
    client); the thread stops at the answer, at a send error, or when `pieces` run out."""
    stop = threading.Event()

    def trickle() -> None:
        for piece in pieces:
            if stop.wait(interval):
                return
            try:
                sock.sendall(piece)
            except OSError:
                return

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        return read_until_close(sock)
    finally:
        stop.set()
        sender.join(timeout=2)


def _dechunk(raw: bytes) -> bytes:
    """The data of a chunked body; a body cut short keeps what arrived."""
    body = bytearray()
    while raw:
        size_line, _, raw = raw.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        body += raw[:size]
        raw = raw[size + 2:]
    return bytes(body)


def get(port: int, path: str, timeout: float = 10.0) -> RawResponse:
    with connect(port, timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        return read_until_close(sock)


class BackgroundGet(threading.Thread):
    """`get(port, path)` in a thread: after join(), `response`, or the `error` that stopped it."""

    def __init__(self, port: int, path: str, timeout: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.timeout = port, path, timeout
        self.response: RawResponse | None = None
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            self.response = get(self.port, self.path, self.timeout)
        except OSError as exc:  # ConnectionError too: a reset or an empty answer
            self.error = exc


def refused_within(port: int, limit: float) -> float | None:
    """Seconds until a new connection is refused, or None if it never was within ``limit``."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            probe = socket.create_connection(("127.0.0.1", port), timeout=0.2)
        except ConnectionRefusedError:
            return time.monotonic() - start
        except OSError:
            pass
        else:
            probe.close()
        time.sleep(0.02)
    return None
