"""X-Request-ID: one id per HTTP request, echoed on the response, in every log line written while
the request runs and on the provider calls it makes.

A client's (or the ingress's) `X-Request-ID` is kept when it is 1-128 characters of
`A-Z a-z 0-9 . _ -`; anything else (missing, empty, too long, other characters, repeated) is
replaced by a fresh uuid4 hex, so an id can never carry a log injection or a huge label.

The id lives in a context variable set by the outermost ASGI middleware, so code on the request's
task sees it, and so does its sync code: asgiref's `sync_to_async` runs it in a copy of the
context.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from coffee_payment.asgi_types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HEADER", "RequestIdFilter", "RequestIdMiddleware", "request_id_current"]

# ASGI servers hand header names over lower-cased.
HEADER = b"x-request-id"
_VALID = re.compile(rb"[A-Za-z0-9._-]{1,128}")

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def request_id_current() -> str | None:
    """The id of the HTTP request being served, or None outside one."""
    return _request_id.get()


def request_id_from(scope: Scope) -> str:
    """The request's valid X-Request-ID, else a new one."""
    given = [value for name, value in scope.get("headers", ()) if name == HEADER]
    if len(given) == 1 and _VALID.fullmatch(given[0]):
        return given[0].decode("ascii")
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Set the request's id for its duration and add it to the response's headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        header = (HEADER, request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        token = _request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to a record written during a request (a key of its JSON line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = _request_id.get()
        if request_id is not None:
            record.request_id = request_id
        return True
