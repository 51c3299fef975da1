"""The chaos run's HTTP client: one connection per request, every exchange recorded with the
client's own port, so that a request cut short by a worker's SIGKILL (whose connections the run
read just before the kill, devtools/chaos_faults.py) is told apart from one the server dropped."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from devtools.loadgen import response_read

_CSRF_COOKIE = re.compile(rb"csrftoken=([A-Za-z0-9]+)")
_CSRF_FIELD = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')


@dataclass
class Exchange:
    kind: str  # "scan", "pay", "confirm", "status-page", "status-poll", "machine-poll", "machine-report"
    started: float  # time.monotonic()
    ended: float
    port: int | None  # the client's end of the connection; None: no connection was made
    status: int | None = None  # None: no answer
    error: str | None = None  # what ended it without an answer: "ConnectionResetError", "timeout", ...


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def location(self) -> str:
        return self.headers.get(b"location", b"").decode("latin-1")

    def csrf(self) -> dict[str, str] | None:
        """The Pay form's CSRF pair of an order page: (cookie header, form field), as a browser sends them."""
        cookie, token = _CSRF_COOKIE.search(self.headers.get(b"set-cookie", b"")), _CSRF_FIELD.search(self.body)
        if cookie is None or token is None:
            return None
        return {"cookie": f"csrftoken={cookie.group(1).decode()}", "token": token.group(1).decode()}


@dataclass
class Client:
    """Sends requests and keeps every Exchange; `timeout` bounds each one (connect, send, answer)."""

    timeout: float
    exchanges: list[Exchange] = field(default_factory=list)

    async def request(self, kind: str, url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
                      form: dict[str, str] | None = None, body: Any = None) -> Reply | None:
        """The answer, or None when there was none (the Exchange says why)."""
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        sent = {"Host": f"{host}:{port}", "Connection": "close", **(headers or {})}
        content = b""
        if form is not None:
            content = urllib.parse.urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            content = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        if method != "GET":
            sent["Content-Length"] = str(len(content))
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in sent.items())
        exchange = Exchange(kind=kind, started=time.monotonic(), ended=0.0, port=None)
        self.exchanges.append(exchange)
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(host, port)
                exchange.port = writer.get_extra_info("sockname")[1]
                writer.write(head.encode("latin-1") + b"\r\n" + content)
                status, answer_headers, answer = await response_read(reader)
            exchange.status = status
            return Reply(status, answer_headers, answer)
        except TimeoutError:
            exchange.error = "timeout"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as error:
            exchange.error = type(error).__name__
        finally:
            exchange.ended = time.monotonic()
            if writer is not None:
                writer.close()
        return None
