"""A small asyncio HTTP/1.1 load client (GET /health) that counts every failure.

Two modes:
    close      one connection per request (``Connection: close``)
    keepalive  reuse each connection until the server says ``Connection: close``

A request "fails" if the connection is refused/reset, closes before a complete
response, or does not answer within ``request_timeout``. A keep-alive
connection that the server closes *without* announcing it is exactly the
race a draining server must avoid, so the next request on it counts as failed
(no silent retry). Everything is bounded: ``duration`` for issuing requests,
``request_timeout`` per request, and a hard cap on the whole run.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

REQUEST_CLOSE = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
REQUEST_KEEPALIVE = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@dataclass
class LoadResult:
    mode: str
    duration: float = 0.0
    ok: int = 0
    non_2xx: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    pids: set[str] = field(default_factory=set)
    server_closes: int = 0  # "Connection: close" announced by the server (keep-alive mode)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rps(self) -> float:
        return self.ok / self.duration if self.duration else 0.0

    def summary(self) -> str:
        errs = ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "none"
        return (
            f"{self.mode}: {self.ok} ok in {self.duration:.1f}s ({self.rps:.0f} req/s), "
            f"non-2xx={self.non_2xx}, errors={self.error_count} [{errs}], "
            f"worker pids seen={len(self.pids)}, server-announced closes={self.server_closes}"
        )


async def response_read(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    """(status, headers by lower-case name, repeated ones joined by ", ", body) of one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if b":" in line:
            name, value = line.split(b":", 1)
            key = name.strip().lower()
            headers[key] = headers[key] + b", " + value.strip() if key in headers else value.strip()
    if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
        return status, headers, await reader.readexactly(int(headers.get(b"content-length", b"0")))
    # Django's responses through uvicorn are chunked: size line, data, CRLF; a 0 size ends it.
    body = bytearray()
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += (await reader.readexactly(size + 2))[:-2]
    await reader.readuntil(b"\r\n")
    return status, headers, bytes(body)


async def _client(port: int, mode: str, stop_at: float, request_timeout: float, result: LoadResult) -> None:
    keepalive = mode == "keepalive"
    request = REQUEST_KEEPALIVE if keepalive else REQUEST_CLOSE
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    while time.monotonic() < stop_at:
        try:
            async with asyncio.timeout(request_timeout):
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                writer.write(request)
                status, headers, _ = await response_read(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as exc:
            result.errors[type(exc).__name__] += 1
            if writer is not None:
                writer.close()
            writer = reader = None
            continue
        if 200 <= status < 300:
            result.ok += 1
        else:
            result.non_2xx += 1
        if pid := headers.get(b"x-worker-pid"):
            result.pids.add(pid.decode())
        server_close = headers.get(b"connection", b"").lower() == b"close"
        if not keepalive or server_close:
            if keepalive:
                result.server_closes += 1
            assert writer is not None
            writer.close()
            writer = reader = None
    if writer is not None:
        writer.close()


async def run_load(
    port: int, mode: str, *, duration: float, concurrency: int = 16, request_timeout: float = 5.0
) -> LoadResult:
    assert mode in ("close", "keepalive")
    result = LoadResult(mode=mode)
    start = time.monotonic()
    stop_at = start + duration
    clients = [_client(port, mode, stop_at, request_timeout, result) for _ in range(concurrency)]
    # Hard cap: a client is at most one request_timeout past stop_at.
    await asyncio.wait_for(asyncio.gather(*clients), timeout=duration + request_timeout + 5)
    result.duration = time.monotonic() - start
    return result


def run_load_sync(port: int, mode: str, **kwargs: Any) -> LoadResult:
    return asyncio.run(run_load(port, mode, **kwargs))
