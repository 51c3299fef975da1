"""The project's ASGI handler: Django's, with a pooled thread per request, the request signals
in as few thread switches as give the same effect, and a leaner middleware chain for
settings.LEAN_PATHS.

- A request's sync code (ORM calls, sync views, the signals' receivers) runs in a long-lived thread
  checked out of a pool for that request alone (coffee_payment.request_threads).
- `handle()` is Django 5.2's, except that while the request signals have only Django's own
  receivers, `request_started` runs in the request's thread with its first sync call, and the
  response closes on the loop when `request_finished` would find nothing to do in the request's
  thread: no thread switch for `/health`, one for a status read on SQLite.
- On the lean paths the middleware is settings.LEAN_MIDDLEWARE, MIDDLEWARE without sessions, auth
  and messages; its stock middleware does no I/O, so its hooks run on the event loop.

Django's own `tests/asgi` and `tests/handlers` run against it (`make test-django-asgi`); the Django
internals it relies on are listed in docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.cache import close_caches
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed, RequestAborted
from django.core.handlers.asgi import ASGIHandler, ASGIRequest, get_script_prefix
from django.core.handlers.base import BaseHandler, reset_urlconf
from django.core.handlers.exception import convert_exception_to_response
from django.db import close_old_connections, connections, reset_queries
from django.dispatch import Signal
from django.http import HttpRequest, HttpResponseBase
from django.urls import set_script_prefix
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string

from coffee_payment.asgi_types import Receive, Scope, Send
from coffee_payment.metrics import RouteLabelled
from coffee_payment.request_threads import RequestThread, SyncThreads

__all__ = ["LeanASGIHandler", "LeanPaths", "get_lean_asgi_application"]

GetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


class LeanPaths:
    """settings.LEAN_PATHS: an entry ending in "/" is a prefix, any other one an exact path."""

    def __init__(self, entries: Iterable[str]) -> None:
        entries = tuple(entries)
        self.exact = frozenset(entry for entry in entries if not entry.endswith("/"))
        self.prefixes = tuple(entry for entry in entries if entry.endswith("/"))

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and (path in self.exact or path.startswith(self.prefixes))


class InlineMiddleware:
    """A stock (MiddlewareMixin) middleware whose hooks run on the event loop.

    What MiddlewareMixin.__acall__ does, without its two `sync_to_async` calls: only for middleware
    whose process_request/process_response do no I/O.
    """

    def __init__(self, middleware: MiddlewareMixin, get_response: GetResponse) -> None:
        self.middleware = middleware
        self.get_response = get_response
        self.process_request = getattr(middleware, "process_request", None)
        self.process_response = getattr(middleware, "process_response", None)
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.process_request(request) if self.process_request else None
        response = response or await self.get_response(request)
        if self.process_response:
            response = self.process_response(request, response)
        return response


def _inline(hook: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """An async callable for Django's view and template-response hook lists, run on the loop."""

    async def run(*args: Any) -> Any:
        return hook(*args)

    run.__self__ = hook.__self__  # type: ignore[attr-defined]  # Django names the hook by it
    return run


class LeanHandler(RouteLabelled, BaseHandler):
    """Django's request handling (resolve, view middleware, view, exceptions) with LEAN_MIDDLEWARE."""

    def __init__(self) -> None:
        self.load_middleware(is_async=True)

    def load_middleware(self, is_async: bool = True) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        handler: GetResponse = convert_exception_to_response(self._get_response_async)
        for path in reversed(settings.LEAN_MIDDLEWARE):
            factory = import_string(path)
            try:
                instance = factory(handler)
            except MiddlewareNotUsed:
                continue
            if isinstance(instance, MiddlewareMixin):
                layer: GetResponse = InlineMiddleware(instance, handler)
            elif iscoroutinefunction(instance):
                layer = instance
            else:
                raise ImproperlyConfigured(
                    f"LEAN_MIDDLEWARE entry {path} is neither async nor a MiddlewareMixin: on the lean "
                    "path it would need a thread (allowed: async middleware, MiddlewareMixin with I/O-free hooks)"
                )
            if hasattr(instance, "process_view"):
                self._view_middleware.insert(0, _inline(instance.process_view))
            if hasattr(instance, "process_template_response"):
                self._template_response_middleware.append(_inline(instance.process_template_response))
            if hasattr(instance, "process_exception"):
                # Django calls these synchronously, in the request's thread, on errors only.
                self._exception_middleware.append(instance.process_exception)
            handler = convert_exception_to_response(layer)
        self._middleware_chain = handler


# Receivers Django itself connects that act only on the state of the thread running them: its
# database connections (django.db.connections is thread-critical, a plain thread-local). While
# these are request_started's only receivers, they can run in the request's thread just before
# the request's first sync job there, in the same thread switch, with the same effect: nothing
# reads that thread's connections before that job. A request that runs no sync code has no thread
# whose connections they could act on.
THREAD_STATE_RECEIVERS = frozenset({reset_queries, close_old_connections})
# request_finished's receivers that Django connects, which may run on the event loop when the
# request's thread, if it had one, holds no connection close_old_connections would close
# (connections_left_as_they_are): close_old_connections finds no connection on the loop (Django
# refuses to open one in async code), close_caches closes the caches that were used (LocMemCache:
# nothing), reset_urlconf clears what get_response_async set, on the loop.
LOOP_SAFE_FINISHED_RECEIVERS = THREAD_STATE_RECEIVERS | {close_caches, reset_urlconf}
REQUEST_CLOSE = (HttpRequest.close, ASGIRequest.close)


def connections_left_as_they_are() -> bool:
    """In a request's thread after each job: whether close_old_connections would leave every
    connection of this thread open (BaseDatabaseWrapper.close_if_unusable_or_obsolete's tests).

    If so after the request's last job, request_finished may skip the thread: the next request in
    it runs request_started's close_old_connections there before its first query, as Django's
    WSGI handler does for a worker's persistent connection. CONN_MAX_AGE = 0 (PostgreSQL's pool)
    is obsolete at once: that request_finished always runs in the thread and closes it.
    """
    now = time.monotonic()
    for connection in connections.all(initialized_only=True):
        if connection.connection is None:
            continue
        if (connection.get_autocommit() != connection.settings_dict["AUTOCOMMIT"] or connection.errors_occurred
                or (connection.close_at is not None and now >= connection.close_at)):
            return False
    return True


def only_receivers(signal: Signal, sender: type, allowed: frozenset[Any]) -> bool:
    """Whether every receiver `signal` has for `sender` is sync and one of `allowed`."""
    sync_receivers, async_receivers = signal._live_receivers(sender)
    return not async_receivers and all(receiver in allowed for receiver in sync_receivers)


def closers_do_no_io(response: HttpResponseBase) -> bool:
    """Whether the response's closers are only its request's own `close()` (which
    BaseHandler.get_response_async adds) with no uploaded file to close: then they close the
    request's in-memory or spooled body, nothing that blocks."""
    return all(
        isinstance(request := getattr(closer, "__self__", None), HttpRequest)
        and getattr(closer, "__func__", None) in REQUEST_CLOSE and not hasattr(request, "_files")
        for closer in response._resource_closers
    )


class LeanASGIHandler(RouteLabelled, ASGIHandler):
    """Django's ASGIHandler with pooled request threads; settings.LEAN_PATHS take the lean chain.

    `handle()` is Django 5.2's, with one change: while the request signals have only Django's
    own receivers (THREAD_STATE_RECEIVERS, LOOP_SAFE_FINISHED_RECEIVERS), `request_started` rides
    with the request's first sync job instead of a thread switch of its own, and a request whose
    thread, if any, keeps its connections (connections_left_as_they_are) closes its response on
    the loop. Any other receiver connected: Django's dispatch, unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lean_paths = LeanPaths(settings.LEAN_PATHS)
        self.lean = LeanHandler()
        self.threads = SyncThreads()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGIHandler.__call__, with the request's one-thread executor from the pool."""
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)  # Django refuses it
            return
        thread = self.threads.request_executor()
        thread.check_after_jobs(connections_left_as_they_are)
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.handle_in(scope, receive, send, thread=thread)
        finally:
            thread.release()

    async def handle_in(self, scope: Scope, receive: Receive, send: Send, *, thread: RequestThread) -> None:
        """ASGIHandler.handle (Django 5.2), request_started deferred to `thread` when that is equivalent."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        # Django closes the body at the end of handle(), which a cancelled request never reaches
        # (the client left while request_finished waited behind a sync view): the thread closes it
        # once that view is done. Closing twice is harmless.
        thread.at_end(body_file.close)
        set_script_prefix(get_script_prefix(scope))
        if only_receivers(signals.request_started, self.__class__, THREAD_STATE_RECEIVERS):
            thread.before_first_job(signals.request_started.send, sender=self.__class__, scope=scope)
        else:
            await signals.request_started.asend(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            await self.close_response(error_response, thread=thread)
            return

        async def process_request(request: HttpRequest, send: Send) -> HttpResponseBase:
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client disconnected during send_response
            return response

        # The disconnect watch goes first: it should not raise errors that would keep
        # process_request() from being cancelled.
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass  # client disconnects are ignored
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()  # views may handle the cancellation
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            await signals.request_finished.asend(sender=self.__class__)
        else:
            await self.close_response(response, thread=thread)
        body_file.close()

    async def close_response(self, response: HttpResponseBase, *, thread: RequestThread) -> None:
        """`response.close()` (request_finished) in the request's thread, or on the loop if that
        thread has nothing for it to do."""
        if (thread.settled and closers_do_no_io(response)
                and only_receivers(signals.request_finished, response._handler_class, LOOP_SAFE_FINISHED_RECEIVERS)):
            response.close()
        else:
            await sync_to_async(response.close)()

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        """BaseHandler.get_response_async through LEAN_MIDDLEWARE for a lean path."""
        if request.path_info in self.lean_paths:
            return await self.lean.get_response_async(request)
        return await super().get_response_async(request)


def get_lean_asgi_application() -> LeanASGIHandler:
    """django.core.asgi.get_asgi_application with the lean path."""
    django.setup(set_prefix=False)
    return LeanASGIHandler()
