"""A per-request deadline for the ASGI application (GUNICORN_TIMEOUT, via settings.REQUEST_TIMEOUT).

Under UvicornWorker, Gunicorn's `timeout` is only a heartbeat, so nothing bounds a slow request:
https://github.com/Kludex/uvicorn/issues/611, https://github.com/Kludex/uvicorn/issues/1276,
https://github.com/benoitc/gunicorn/pull/1730. At the deadline (counted from the end of the
headers) the client gets 408 while its body is still arriving, else 504, both with
`Connection: close`; a response already started is cut. The application sees a client disconnect,
on which Django cancels the view; one that does not listen is cancelled DISCONNECT_GRACE later.
Sync code in a thread cannot be stopped: it runs to its end, its answer thrown away
(asgiref >= 3.13 keeps that off the event loop: https://github.com/django/asgiref/issues/535).
`request_deadline()` tells code serving the request when that is, so that its waits end before
(the payments app reads it through settings.REQUEST_DEADLINE_CALLABLE).
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextvars import ContextVar

from coffee_payment.asgi_types import DISCONNECT, ASGIApp, Message, Receive, Scope, Send, plain_answer
from coffee_payment.metrics import REQUEST_TIMEOUTS

__all__ = ["RequestTimeoutError", "RequestTimeoutMiddleware", "request_deadline"]

logger = logging.getLogger(__name__)

# After the deadline, how long an application gets to stop on its own (on the disconnect it was
# shown) before its task is cancelled. The client already has its answer by then.
DISCONNECT_GRACE = 0.5
# The time.monotonic() at which the request being served is answered 504; seen by its task, the
# tasks it starts and its sync code (asgiref copies the context into the thread).
_deadline: ContextVar[float | None] = ContextVar("request_deadline", default=None)


def request_deadline() -> float | None:
    """When the request being served times out (time.monotonic()), or None outside one."""
    return _deadline.get()


class RequestTimeoutError(Exception):
    """The deadline passed after the response had started; the connection is aborted."""


class _Request:
    __slots__ = ("body_complete", "receiving", "response_started", "timed_out")

    def __init__(self) -> None:
        self.body_complete = False
        self.receiving: set[asyncio.Future[Message]] = set()
        self.response_started = False
        self.timed_out = False


class RequestTimeoutMiddleware:
    """Answer 504 (408 for a slow body) to HTTP requests not answered within `timeout` seconds.

    Only `http` scopes are timed; `lifespan` and `websocket` pass through (a websocket's lifetime
    is not a request deadline).
    """

    def __init__(self, app: ASGIApp, *, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout={timeout!r} is not a number of seconds (allowed: > 0)")
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request = _Request()

        async def timed_receive() -> Message:
            if request.timed_out:
                return DISCONNECT
            receiving = asyncio.ensure_future(receive())
            request.receiving.add(receiving)
            try:
                # wait() rather than await: the deadline cancels `receiving`, not this task.
                await asyncio.wait({receiving})
            except asyncio.CancelledError:
                receiving.cancel()
                raise
            finally:
                request.receiving.discard(receiving)
            if receiving.cancelled():
                return DISCONNECT
            message = receiving.result()
            if message["type"] != "http.request" or not message.get("more_body", False):
                request.body_complete = True
            return message

        async def timed_send(message: Message) -> None:
            if request.timed_out:
                # The client already has the 504/408 (or is being cut off); drop the rest.
                return
            if message["type"] == "http.response.start":
                # Set before awaiting: a start held up by flow control counts as started, so a
                # second status line is never written after it.
                request.response_started = True
            await send(message)

        # The application runs in a task of its own, so the deadline's answer goes out on time even
        # when the application is slow to stop (a sync view's thread is waited for). The task copies
        # the context as it is created: with the deadline in it.
        token = _deadline.set(time.monotonic() + self.timeout)
        try:
            task = asyncio.ensure_future(self.app(scope, timed_receive, timed_send))
        finally:
            _deadline.reset(token)
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout)
            if done:
                task.result()  # the application's own exception, for uvicorn to log and answer
                return
            await self._answer_timeout(scope, request, task, send)
        except BaseException:
            # This request's own task was cancelled (a worker's drain deadline) or failed.
            task.cancel()
            raise

    async def _answer_timeout(self, scope: Scope, request: _Request, task: asyncio.Future[None], send: Send) -> None:
        waiting_for_body = bool(request.receiving) and not request.body_complete
        request.timed_out = True
        for receiving in list(request.receiving):
            receiving.cancel()  # the application's receive() returns http.disconnect
        method, path = scope.get("method", "?"), scope.get("path", "?")
        if request.response_started:
            REQUEST_TIMEOUTS.labels("aborted").inc()
            logger.warning("%s %s exceeded %gs after its response started; aborting the connection",
                           method, path, self.timeout)
            raise RequestTimeoutError(f"{method} {path} exceeded {self.timeout:g}s mid-response")

        status, reason = (408, b"Request Timeout") if waiting_for_body else (504, b"Gateway Timeout")
        REQUEST_TIMEOUTS.labels(str(status)).inc()
        logger.warning("%s %s exceeded %gs: answered %d", method, path, self.timeout, status)
        await plain_answer(send, status, reason, close=True)

        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_GRACE)
        if not done:
            task.cancel()
            # Stay in flight (uvicorn tracks this task, not the application's) until the
            # application has really stopped, so a draining worker waits for it.
            await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            logger.debug("%s %s failed after its timeout", method, path, exc_info=task.exception())
