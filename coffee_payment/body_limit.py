"""A size limit on request bodies (GUNICORN_MAX_BODY_BYTES), enforced before the body is read.

Django reads a whole body (spooling it to /tmp) before it dispatches. As nginx's
`client_max_body_size` does, a `Content-Length` over the limit gets `413` at once, the application
never running; a chunked body gets it at the read that crosses, the application seeing a client
disconnect. The 413 carries `Connection: close`; a response already started is kept.
"""

from __future__ import annotations

import logging

from coffee_payment.asgi_types import DISCONNECT, ASGIApp, Message, Receive, Scope, Send, plain_answer

__all__ = ["BodyLimitMiddleware"]

logger = logging.getLogger(__name__)

REASON = b"Content Too Large"


class BodyLimitMiddleware:
    """Refuse HTTP request bodies over `limit` bytes with 413; other scopes pass through."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit={limit!r} is not a number of bytes (allowed: >= 0)")
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            logger.warning("%s %s declared a %d-byte body (limit %d): answered 413",
                           scope.get("method"), scope.get("path"), declared, self.limit)
            await _send_413(send)
            return

        received = 0
        refused = False
        response_started = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return DISCONNECT
            message = await receive()
            if message["type"] != "http.request":
                return message
            received += len(message.get("body", b""))
            if received <= self.limit:
                return message
            refused = True
            if response_started:
                logger.warning("%s %s body passed %d bytes after its response started; reading stopped",
                               scope.get("method"), scope.get("path"), self.limit)
            else:
                logger.warning("%s %s body passed %d bytes: answered 413",
                               scope.get("method"), scope.get("path"), self.limit)
                await _send_413(send)
            return DISCONNECT

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if refused and not response_started:
                return  # the client has its 413; whatever the application says after it is dropped
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            # The HTTP parser has already refused a malformed or conflicting length with 400.
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send) -> None:
    await plain_answer(send, 413, REASON, close=True)
