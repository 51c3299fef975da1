"""The lean path's system checks (coffee_payment/lean_path_checks.py)."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from coffee_payment.lean_path_checks import check_lean_middleware, check_lean_views_are_async


def sync_order_status(request: HttpRequest, order_id: str) -> HttpResponse:
    return HttpResponse()


async def async_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse()


def sync_report(request: HttpRequest) -> HttpResponse:
    return HttpResponse()


class URLConf:
    """A URLconf for settings.ROOT_URLCONF (hashable: Django caches resolvers by it)."""

    def __init__(self, patterns: list[Any]) -> None:
        self.urlpatterns = patterns


def urlconf(*patterns: Any) -> URLConf:
    """The project's routes plus `patterns`."""
    return URLConf([path("", include("payments.urls")), *patterns])


def test_the_project_passes_the_lean_path_checks() -> None:
    assert [message.id for message in checks.run_checks() if message.id.startswith("coffee_payment.")] == []


def test_a_sync_view_under_a_lean_path_is_reported(settings: Any) -> None:
    settings.ROOT_URLCONF = urlconf(path("v1/order-status-sync/<str:order_id>", sync_order_status),
                                    path("reports/", sync_report), path("health", async_view))
    errors = check_lean_views_are_async()
    assert [error.id for error in errors] == ["coffee_payment.E002"]
    assert "sync_order_status" in errors[0].msg and "/v1/order-status-sync/" in errors[0].msg


def test_a_sync_view_whose_converter_can_spell_a_lean_path_is_reported(settings: Any) -> None:
    settings.ROOT_URLCONF = urlconf(path("<str:section>/export", sync_report))
    assert [error.id for error in check_lean_views_are_async()] == ["coffee_payment.E002"]


def test_which_sync_views_are_reported_follows_lean_paths(settings: Any) -> None:
    settings.ROOT_URLCONF = urlconf(path("reports/", sync_report))
    assert check_lean_views_are_async() == []
    settings.LEAN_PATHS = ("/reports/",)
    assert [error.id for error in check_lean_views_are_async()] == ["coffee_payment.E002"]
    settings.LEAN_PATHS = ("/rep",)  # an exact path, which /reports/ is not
    assert check_lean_views_are_async() == []


def test_lean_middleware_out_of_order_or_not_in_middleware_is_reported(settings: Any) -> None:
    settings.LEAN_MIDDLEWARE = list(reversed(settings.LEAN_MIDDLEWARE))
    assert [error.id for error in check_lean_middleware()] == ["coffee_payment.E001"]
    settings.LEAN_MIDDLEWARE = ["tests.coffee_payment.test_asgi_handler.SyncOnlyMiddleware"]
    assert [error.id for error in check_lean_middleware()] == ["coffee_payment.E001"]


def test_csrf_tokens_in_the_session_are_refused_on_the_lean_path(settings: Any) -> None:
    settings.CSRF_USE_SESSIONS = True
    assert [error.id for error in check_lean_middleware()] == ["coffee_payment.E003"]
