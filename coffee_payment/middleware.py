"""Middleware of the project: probe answers that bypass Host validation (kubelet probes send the
pod IP as Host), and a 400 for NUL characters before they reach the database."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.urls import resolve

from coffee_payment.metrics import route_label_set

GetResponse = Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]


class DualModeMiddleware:
    """Middleware that runs in the chain's own mode: async under ASGI, sync under WSGI."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)


class ProbeMiddleware(DualModeMiddleware):
    """Serve settings.PROBE_PATHS straight from their views, before any middleware reads Host.

    Every other path still goes through SecurityMiddleware and CommonMiddleware, which enforce
    ALLOWED_HOSTS. The probe views read neither the Host header nor the session. First in both
    MIDDLEWARE and LEAN_MIDDLEWARE (coffee_payment/asgi_handler.py), where the probes are lean paths.
    """

    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)
        self.probe_paths = frozenset(settings.PROBE_PATHS)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        if request.path_info in self.probe_paths:
            return async_to_sync(self._probe_view(request))(request)
        return self.get_response(request)  # type: ignore[return-value]

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info in self.probe_paths:
            return await self._probe_view(request)(request)
        return await self.get_response(request)  # type: ignore[misc]

    @staticmethod
    def _probe_view(request: HttpRequest) -> Callable[..., Awaitable[HttpResponseBase]]:
        match = resolve(request.path_info)
        route_label_set(request, match.view_name)
        # With the URL pattern's own arguments (/metrics is given what it reads from the database).
        return functools.partial(match.func, *match.args, **match.kwargs)


# Form bodies Django parses into request.POST; other bodies (JSON) are the view's to read.
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def nul_culprit(request: HttpRequest) -> str | None:
    """What in the request holds a NUL character, or None.

    PostgreSQL's text columns cannot store NUL (psycopg refuses the query with DataError, a 500),
    and no path, parameter, cookie or form field of this server has a use for one.
    """
    if "\x00" in request.path:
        return "the path"
    parts = [("query parameter", request.GET), ("cookie", request.COOKIES)]
    if request.method == "POST" and request.content_type in _FORM_TYPES:
        # The raw body first: Django parses a multipart body from the stream, after which
        # `request.body` raises RawPostDataException, a 500 for a view that reads the body itself
        # (the webhook, the machine API: a JSON body sent with a form's content type).
        request.body  # noqa: B018
        parts.append(("form field", request.POST))
    for kind, values in parts:
        items = values.lists() if hasattr(values, "lists") else ((k, [v]) for k, v in values.items())
        for name, entries in items:
            if "\x00" in name or any("\x00" in entry for entry in entries):
                return f"{kind} {name[:64]!r}"
    return None


class RefuseNulMiddleware(DualModeMiddleware):
    """400 for a request with a NUL character in its path, query, cookies or form fields.

    Before anything reads the database with them: the session cookie, an order id in the path, the
    admin's search box. On both MIDDLEWARE and LEAN_MIDDLEWARE; the checks do no I/O (a form body
    is already in memory or spooled when the request object is built).
    """

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        return self._refusal(request) or self.get_response(request)  # type: ignore[return-value]

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        return self._refusal(request) or await self.get_response(request)  # type: ignore[misc]

    @staticmethod
    def _refusal(request: HttpRequest) -> HttpResponseBase | None:
        try:
            culprit = nul_culprit(request)
        except BadRequest as error:
            # A form body in another charset than UTF-8. Answered here: Django marks the body
            # unparseable for other parse errors but not this one, so the 400 page's own CSRF check
            # would read request.POST again, raise again, and turn the 400 into a 500.
            return JsonResponse({"error": str(error)}, status=400)
        if culprit is None:
            return None
        return JsonResponse({"error": f"{culprit} contains a NUL character (allowed: none)"}, status=400)
