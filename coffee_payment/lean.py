"""The lean path: Django's ASGI handler, minus the thread hops, for the paths in settings.LEAN_PATHS.

Per request, Django's own ASGIHandler starts a thread for the request's sync code (and another to
join it), sends `request_started` and `request_finished` through `sync_to_async`, and runs every
stock middleware's hooks (SessionMiddleware, CsrfViewMiddleware, ...) through `sync_to_async`:
about fourteen thread switches for a JSON answer. On the lean paths instead:

- the middleware is settings.LEAN_MIDDLEWARE, an ordered subset of settings.MIDDLEWARE without
  sessions, auth and messages (the admin's needs). Its stock middleware (Host validation, security
  headers, CSRF, X-Frame-Options) does no I/O, so its hooks run on the event loop
  (`InlineMiddleware`);
- the request's sync code (ORM calls, services) runs on a long-lived lane thread
  (coffee_payment.sync_lanes), which also sends the request signals, so a request that reads the
  database switches threads once per ORM call and a probe not at all.

Everything else is Django's: URL resolution, view middleware, exception-to-response conversion,
the disconnect watch that cancels a view, response sending. Other paths (the admin, static files)
get Django's handler unchanged. `coffee_payment.checks` keeps the configuration honest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed, RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.core.handlers.exception import convert_exception_to_response
from django.http import FileResponse, HttpRequest, HttpResponseBase
from django.urls import set_script_prefix
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string

from coffee_payment.asgi_types import Receive, Scope, Send
from coffee_payment.sync_lanes import RequestLane, SyncLanes

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


class LeanHandler(BaseHandler):
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
                # Django calls these synchronously, in the request's (lane) thread, on errors only.
                self._exception_middleware.append(instance.process_exception)
            handler = convert_exception_to_response(layer)
        self._middleware_chain = handler


class LeanASGIHandler(ASGIHandler):
    """Django's ASGIHandler; requests for settings.LEAN_PATHS take the lean path."""

    def __init__(self) -> None:
        super().__init__()
        self.lean_paths = LeanPaths(settings.LEAN_PATHS)
        self.lean = LeanHandler()
        self.lanes = SyncLanes(count=settings.SYNC_LANES, sender=self.__class__)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # request.path_info, as ASGIRequest will compute it.
        path_info = scope["path"].removeprefix(get_script_prefix(scope)) if scope["type"] == "http" else None
        if path_info not in self.lean_paths:
            await super().__call__(scope, receive, send)
            return
        lane = self.lanes.acquire(scope=scope)
        try:
            async with ThreadSensitiveContext(executor=lane):
                await self._handle_lean(scope, receive, send, lane=lane)
        finally:
            lane.release(finish=None)  # no-op unless _handle_lean ended early

    async def _handle_lean(self, scope: Scope, receive: Receive, send: Send, *, lane: RequestLane) -> None:
        """ASGIHandler.handle with the lean chain, and the request signals left to the lane."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            _close_resources(error_response)
            return

        async def process_request() -> HttpResponseBase:
            response = await self.lean.get_response_async(request)
            response._handler_class = self.__class__  # type: ignore[attr-defined]
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client went away while the response was sent
            return response

        # As Django does: a disconnect (or coffee_payment.request_timeout's deadline) cancels the view.
        tasks = [asyncio.create_task(self.listen_for_disconnect(receive)), asyncio.create_task(process_request())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            lane.release(finish=None)
        else:
            if lane.used:
                # response.close() runs its closers and sends request_finished: in the lane, after
                # the request's last sync call, without holding up this coroutine.
                lane.release(finish=response.close)
            else:
                _close_resources(response)
                lane.release(finish=None)
        body_file.close()


def _close_resources(response: HttpResponseBase) -> None:
    """HttpResponseBase.close() without request_finished: for a request that used no thread."""
    for closer in response._resource_closers:  # type: ignore[attr-defined]
        try:
            closer()
        except Exception:  # as Django's close(): a failing closer must not stop the others
            pass
    response.closed = True  # type: ignore[attr-defined]


def get_lean_asgi_application() -> LeanASGIHandler:
    """django.core.asgi.get_asgi_application with the lean path."""
    django.setup(set_prefix=False)
    return LeanASGIHandler()
