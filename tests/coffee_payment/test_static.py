"""Static files through the ASGI stack; the collected, hashed files of production are checked in
the container image (tests/deploy/test_container.py)."""

from __future__ import annotations

from django.conf import settings
from django.test import AsyncClient


def test_probes_come_first_and_static_files_right_after_security() -> None:
    middleware = settings.MIDDLEWARE
    assert middleware[0] == "coffee_payment.middleware.ProbeMiddleware"
    security = middleware.index("django.middleware.security.SecurityMiddleware")
    assert middleware[security + 1] == "servestatic.middleware.ServeStaticMiddleware"


async def test_admin_static_file_is_served_without_collectstatic_outside_production() -> None:
    response = await AsyncClient().get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    assert b"".join([chunk async for chunk in response.streaming_content])
