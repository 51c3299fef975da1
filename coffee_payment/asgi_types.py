"""The ASGI shapes the project's middleware, worker and tools share: the callables' type aliases,
the disconnect a middleware hands an application it stops, and the plain-text answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DISCONNECT: Message = {"type": "http.disconnect"}
PLAIN_TEXT = b"text/plain; charset=utf-8"


async def plain_answer(send: Send, status: int, body: bytes, *, close: bool = False, head: bool = False,
                       headers: Iterable[tuple[bytes, bytes]] = (), content_type: bytes = PLAIN_TEXT) -> None:
    """A whole answer in two messages: `status`, `body` with its length, `Connection: close` when the
    connection must not be reused; `head`: the headers of `body` without it."""
    sent = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]
    if close:
        sent.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": sent})
    await send({"type": "http.response.body", "body": b"" if head else body, "more_body": False})
