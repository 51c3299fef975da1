"""The lean path: Django's ASGI handler with pooled request threads, and a leaner middleware chain
for the paths in settings.LEAN_PATHS.

Per request, Django's own ASGIHandler starts a thread for the request's sync code (and another to
join it), and runs every stock middleware's hooks (SessionMiddleware, CsrfViewMiddleware, ...)
through `sync_to_async`: about fourteen thread switches for a JSON answer. Here instead:

- every request's sync code, the request signals' receivers included, runs in a long-lived thread
  checked out of a pool for that request alone (coffee_payment.sync_lanes): no thread is started
  per request, and no other request uses that thread until this one has ended;
- on the lean paths the middleware is settings.LEAN_MIDDLEWARE, an ordered subset of
  settings.MIDDLEWARE without sessions, auth and messages (the admin's needs). Its stock
  middleware (Host validation, security headers, CSRF, X-Frame-Options) does no I/O, so its hooks
  run on the event loop (`InlineMiddleware`).

Everything else is Django's `ASGIHandler.handle()`: `request_started`, URL resolution, view
middleware, exception-to-response conversion, the disconnect watch that cancels a view, response
sending, `response.close()` and `request_finished` in the request's thread, closing the body after
the request's sync work. Other paths (the admin, static files) get the whole MIDDLEWARE.
`coffee_payment.checks` keeps the configuration honest; Django's own `tests/asgi` and
`tests/handlers` run against this handler (`make test-django-asgi`). The Django internals relied
upon are listed in PROJECT.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin
from django.utils.module_loading import import_string

from coffee_payment.asgi_types import Receive, Scope, Send
from coffee_payment.metrics import RouteLabelled
from coffee_payment.sync_lanes import SyncThreads

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


class LeanASGIHandler(RouteLabelled, ASGIHandler):
    """Django's ASGIHandler with pooled request threads; settings.LEAN_PATHS take the lean chain.

    Two overrides, the rest is Django's own `handle()`: reading the body, `request_started`, the
    disconnect watch that cancels the view, sending the response, `response.close()` (with
    `request_finished`) in the request's thread, then closing the body.
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
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.handle(scope, receive, send)
        finally:
            thread.release()

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        """BaseHandler.get_response_async through LEAN_MIDDLEWARE for a lean path."""
        if request.path_info in self.lean_paths:
            return await self.lean.get_response_async(request)
        return await super().get_response_async(request)


def get_lean_asgi_application() -> LeanASGIHandler:
    """django.core.asgi.get_asgi_application with the lean path."""
    django.setup(set_prefix=False)
    return LeanASGIHandler()
