"""Probe answers that bypass Host validation: kubelet probes send the pod IP as Host."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.urls import resolve


class ProbeMiddleware:
    """Serve settings.PROBE_PATHS straight from their views, before any middleware reads Host.

    Every other path still goes through SecurityMiddleware and CommonMiddleware, which enforce
    ALLOWED_HOSTS. The probe views read neither the Host header nor the session. First in both
    MIDDLEWARE and LEAN_MIDDLEWARE (coffee_payment/lean.py), where the probes are lean paths.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]) -> None:
        self.get_response = get_response
        self.probe_paths = frozenset(settings.PROBE_PATHS)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        if request.path_info in self.probe_paths:
            return async_to_sync(resolve(request.path_info).func)(request)
        return self.get_response(request)  # type: ignore[return-value]

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info in self.probe_paths:
            return await resolve(request.path_info).func(request)
        return await self.get_response(request)  # type: ignore[misc]
