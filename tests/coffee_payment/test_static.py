"""Static files through the ASGI stack; the collected, hashed files of production are checked in
the container image (tests/deploy/test_container.py)."""

from __future__ import annotations

from django.test import AsyncClient


async def test_admin_static_file_is_served_without_collectstatic_outside_production() -> None:
    response = await AsyncClient().get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    assert b"".join([chunk async for chunk in response.streaming_content])


async def test_static_files_get_the_security_headers_and_never_touch_the_session() -> None:
    """Served right after the security middleware: its headers, but no session or CSRF cookie work."""
    response = await AsyncClient().get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "Cookie" not in response.get("Vary", "") and not response.cookies
