"""Production's security settings: `check --deploy` clean, HTTPS enforced with the probes exempt,
the admin login throttled."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient, override_settings

from coffee_payment.asgi_types import ASGIApp
from devtools.processes import BIN, base_environ, run
from tests.support.asgi_client import ClientAt
from tests.support.fuzz import call, fuzzed

def test_check_deploy_is_clean_in_the_production_layer(tmp_path: Path) -> None:
    env = base_environ(tmp_path, DJANGO_ENV="production", DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
                       DJANGO_ALLOWED_HOSTS="pay.example.com", DATABASE_ALLOW_SQLITE="true")
    result = run([str(BIN / "python"), "manage.py", "check", "--deploy", "--fail-level", "WARNING"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.django_db(transaction=True)
def test_plain_http_is_redirected_except_the_probes(application: ASGIApp) -> None:
    status, headers, _ = asyncio.run(call(application, fuzzed("GET", "/v1/order-status/x", https=False)))
    assert (status, headers["location"]) == (301, "https://localhost/v1/order-status/x")
    # Kubelet: plain HTTP, the pod IP as Host.
    for path in ("/health", "/ready"):
        status, _, _ = asyncio.run(call(application, fuzzed("GET", path, host="10.244.1.17:8000", https=False)))
        assert status == 200
    # Through the ingress: X-Forwarded-Proto says HTTPS; the answer carries HSTS.
    status, headers, _ = asyncio.run(call(application, fuzzed("GET", "/v1/order-status/x")))
    assert status == 404
    assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"


@pytest.mark.django_db(transaction=True)
@override_settings(AXES_FAILURE_LIMIT=3)
async def test_admin_login_is_locked_after_repeated_failures_per_client_address() -> None:
    """The address is REMOTE_ADDR (the ASGI scope's client, which uvicorn rewrites only for a trusted
    proxy): an X-Forwarded-For of the client's own choosing changes nothing."""
    await User.objects.acreate_superuser("staff", "staff@example.com", "right-password-123")
    attacker, other = ClientAt("198.51.100.1"), ClientAt("198.51.100.2")

    async def log_in(client: AsyncClient, password: str, forwarded: str) -> tuple[int, str]:
        response = await client.post("/admin/login/?next=/admin/", {"username": "staff", "password": password},
                                     headers={"x-forwarded-for": forwarded, "x-real-ip": forwarded})
        return response.status_code, response.content.decode()

    for number in range(2):
        assert (await log_in(attacker, "wrong", f"203.0.113.{number}"))[0] == 200  # the form again, with an error
    # The third failure reaches the limit: locked out, and so is the right password from there.
    status, text = await log_in(attacker, "wrong", "203.0.113.2")
    assert status == 429 and "too many login attempts" in text.lower()
    status, _ = await log_in(attacker, "right-password-123", "198.51.100.2")
    assert status == 429
    # Another client address still logs in.
    status, _ = await log_in(other, "right-password-123", "198.51.100.1")
    assert status == 302
