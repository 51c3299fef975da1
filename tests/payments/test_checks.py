"""The async discipline check: a sync view on the I/O path fails `manage.py check`."""

from __future__ import annotations

from django.core import checks
from django.http import HttpRequest, HttpResponse
from django.urls import path

from payments import urls
from payments.checks import check_views_are_async, sync_views


def test_every_payments_view_is_async() -> None:
    assert sync_views(urls.urlpatterns) == []
    assert [message.id for message in checks.run_checks(tags=["payments"])] == []


def test_a_sync_view_is_reported(monkeypatch) -> None:
    def order_status(request: HttpRequest, order_id: str) -> HttpResponse:
        return HttpResponse()

    monkeypatch.setattr(urls, "urlpatterns", [*urls.urlpatterns, path("v1/order-status-sync/<str:order_id>", order_status)])
    errors = check_views_are_async()
    assert [error.id for error in errors] == ["payments.E001"]
    assert "order_status" in errors[0].msg and "v1/order-status-sync" in errors[0].msg
