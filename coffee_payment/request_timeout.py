"""A per-request deadline for the ASGI application (GUNICORN_TIMEOUT, via settings.REQUEST_TIMEOUT).

Under UvicornWorker, Gunicorn's `timeout` is only a worker heartbeat (the event loop keeps beating
while a request runs), so nothing bounds a slow request:
https://github.com/Kludex/uvicorn/issues/611, https://github.com/Kludex/uvicorn/issues/1276,
https://github.com/benoitc/gunicorn/pull/1730.

What the client gets when `timeout` seconds pass (from the end of the request headers) without a
complete answer:

- `408 Request Timeout` if the application was still waiting for the request body (a slow or
  stalled upload; Django reads the whole body before it dispatches);
- `504 Gateway Timeout` otherwise (a slow view, a slow upstream call);
- if the application had already started its response, no status can be sent any more: the
  middleware raises RequestTimeoutError, uvicorn logs it and closes the connection, so the client
  sees a truncated response, never one that looks complete.

Both answers carry `Connection: close`: after a 408 the unread body is still on the wire, and
after a 504 the application may still be running for that request.

At the deadline the application sees what a client disconnect looks like: every `receive()`
returns `http.disconnect`. Django's ASGI handler listens for exactly that and cancels the view
itself (async views get CancelledError where they await), which keeps its own bookkeeping
(request_finished, closing the body) intact. An application that does not listen is cancelled
after DISCONNECT_GRACE seconds.

What cannot be interrupted: sync code (sync views, ORM calls) runs in a thread via asgiref's
sync_to_async, and a thread cannot be stopped. The client gets its 504 on time; the call runs to
its end in the background, keeping its thread (a pooled one, returned to the pool only after the
call; coffee_payment/sync_lanes.py), its database connection and its locks, and its side effects
still happen; its response is thrown away. Django's handler waits for the call before it sends
request_finished and closes the request body; if the application is cancelled meanwhile (after
DISCONNECT_GRACE), the body closes once the call lets go of the request. asgiref before 3.13 waited for that thread with a
blocking `executor.shutdown()` on the event loop (https://github.com/django/asgiref/issues/535,
fixed by https://github.com/django/asgiref/pull/563), which froze the whole worker: setup.cfg pins
asgiref>=3.13. Put real deadlines inside such calls (database statement_timeout, HTTP client
timeouts).
"""

from __future__ import annotations

import asyncio
import logging

from coffee_payment.asgi_types import ASGIApp, Message, Receive, Scope, Send
from coffee_payment.metrics import REQUEST_TIMEOUTS

__all__ = ["RequestTimeoutError", "RequestTimeoutMiddleware"]

logger = logging.getLogger(__name__)

# After the deadline, how long an application gets to stop on its own (on the disconnect it was
# shown) before its task is cancelled. The client already has its answer by then.
DISCONNECT_GRACE = 0.5
DISCONNECT: Message = {"type": "http.disconnect"}


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
        # when the application is slow to stop (a sync view's thread is waited for).
        task = asyncio.ensure_future(self.app(scope, timed_receive, timed_send))
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
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(reason)).encode()),
                (b"connection", b"close"),
            ],
        })
        await send({"type": "http.response.body", "body": reason, "more_body": False})

        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_GRACE)
        if not done:
            task.cancel()
            # Stay in flight (uvicorn tracks this task, not the application's) until the
            # application has really stopped, so a draining worker waits for it.
            await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            logger.debug("%s %s failed after its timeout", method, path, exc_info=task.exception())
