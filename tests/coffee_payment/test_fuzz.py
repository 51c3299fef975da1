"""Hostile requests at every route of the real ASGI application, in-process: never a 5xx, and every
log line JSON (production's log format). tests/integration/test_fuzz_server.py sends a smaller
share of the same requests to a real Gunicorn."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.middleware.csrf import _get_new_csrf_string
from hypothesis import HealthCheck, given, settings as hypothesis_settings

from coffee_payment.asgi_types import ASGIApp
from tests.support.fuzz import Fuzzed, Staff, call, fuzzed, is_json_line, json_logs, requests, route_regexes

# Committed data: the application's threads (lanes, asgiref's) use connections of their own.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

EXAMPLES = 200


@pytest.fixture
def staff() -> Staff:
    """A superuser's session and CSRF token, as a browser holds them after logging in."""
    user = User.objects.create_superuser("fuzz-admin", "admin@example.com", "not-used-to-log-in")
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return Staff(session_key=session.session_key, csrf_token=_get_new_csrf_string())


def test_hostile_requests_never_get_a_5xx_and_logs_stay_json(application: ASGIApp, staff: Staff) -> None:
    regexes = route_regexes()
    assert any(regex.startswith("admin/") for regex in regexes) and any("webhook" in r for r in regexes)

    @hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request=requests(regexes, staff=staff))
    def one(request: Fuzzed) -> None:
        with json_logs() as logs:
            status, _, body = asyncio.run(call(application, request))
        assert status < 500, (status, request, body[:500])
        lines = logs.getvalue().splitlines()
        assert all(is_json_line(line) for line in lines), (request, lines)

    one()


# The cases the fuzz test is for, spelled out --------------------------------------------------------

def test_deeply_nested_json_to_the_webhook_is_a_clear_400(application: ASGIApp) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    status, _, body = asyncio.run(call(application, fuzzed("POST", "/v1/payments/webhook", body=nested,
                                                       content_type="application/json")))
    assert (status, json.loads(body)) == (400, {"error": "notification body is nested too deeply"})


@pytest.mark.parametrize("path", ["/v1/payments/webhook", "/v1/machine/orders/x/report", "/v1/machine/menu"])
def test_a_form_body_to_a_json_route_is_a_4xx(application: ASGIApp, path: str) -> None:
    """A multipart body: the NUL check parses the form, and the view still reads the raw body."""
    body = b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--b--\r\n'
    method = "PUT" if path.endswith("menu") else "POST"
    status, _, _ = asyncio.run(call(application, fuzzed(method, path, body=body,
                                                       content_type="multipart/form-data; boundary=b")))
    assert 400 <= status < 500


@pytest.mark.parametrize("target", [
    "/v1/order-status/a%00b", "/v1/orders/a%00b", "/v1/pay?deviceUuid=m%00&orderId=x", "/admin/login/?next=%00",
])
def test_a_nul_character_is_a_400_naming_where_it_is(application: ASGIApp, target: str) -> None:
    status, _, body = asyncio.run(call(application, fuzzed("GET", target)))
    assert status == 400
    assert json.loads(body)["error"].endswith("contains a NUL character (allowed: none)")


def test_a_nul_in_the_session_cookie_is_a_400_before_the_session_is_read(application: ASGIApp) -> None:
    request = Fuzzed(method="GET", target=b"/admin/", headers=(
        (b"host", b"localhost"), (b"x-forwarded-proto", b"https"), (b"cookie", b'sessionid="\\000abcdefgh"'),
    ))
    status, _, body = asyncio.run(call(application, request))
    assert (status, json.loads(body)) == (400, {"error": "cookie 'sessionid' contains a NUL character (allowed: none)"})


def test_a_bad_host_header_is_one_json_warning_line_without_traceback(application: ASGIApp) -> None:
    with json_logs() as logs:
        status, _, _ = asyncio.run(call(application, fuzzed("GET", "/v1/pay", host="evil.example")))
    assert status == 400
    records = [json.loads(line) for line in logs.getvalue().splitlines()]
    disallowed = [record for record in records if record["logger"] == "django.security.DisallowedHost"]
    assert len(disallowed) == 1, records
    assert disallowed[0]["level"] == "WARNING"
    assert disallowed[0]["message"].startswith("Invalid HTTP_HOST header: 'evil.example'.")
    assert "exc_info" not in disallowed[0] and "Traceback" not in logs.getvalue()
