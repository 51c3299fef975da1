"""The lean path (coffee_payment/asgi_handler.py, request_threads.py) in-process, next to Django's own ASGI handler."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished
from django.db import connections
from django.db.backends.utils import CursorWrapper
from django.http import HttpRequest, HttpResponse

from coffee_payment.asgi_handler import LeanASGIHandler, LeanHandler, LeanPaths
from coffee_payment.asgi_types import ASGIApp
from coffee_payment.request_threads import THREAD_NAME_PREFIX
from devtools.fake_provider import FakeProvider
from payments.models import Order
from tests.coffee_payment.conftest import idle_threads_run
from tests.payments.conftest import device, fake, fake_server, merchant, order, scan_parameters  # noqa: F401

# Request threads are threads of their own: they must see the tests' rows, so no wrapping transaction.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

ORDER_ID = scan_parameters()["order_id"]
QR = {"deviceUuid": "machine-1", "orderId": ORDER_ID, "drinkNo": "2", "size": "2"}


def client(app: ASGIApp, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver", **kwargs)


async def request(app: ASGIApp, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async with client(app) as http:
        return await http.request(method, url, **kwargs)


def test_lean_paths_are_exact_paths_and_prefixes() -> None:
    paths = LeanPaths(("/health", "/v1/"))
    assert "/health" in paths and "/v1/order-status/x" in paths
    assert "/healthz" not in paths and "/v1" not in paths and "/admin/" not in paths


async def test_api_paths_enforce_allowed_hosts_and_probes_do_not(lean: LeanASGIHandler) -> None:
    assert (await request(lean, "GET", "/v1/order-status/nope", headers={"host": "evil.example"})).status_code == 400
    assert (await request(lean, "GET", "/health", headers={"host": "10.244.1.17:8000"})).status_code == 200
    missing = await request(lean, "GET", "/v1/order-status/nope")
    assert (missing.status_code, missing.json()) == (404, {"error": "no order 'nope'"})


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", f"/v1/order-status/{ORDER_ID}"),
        ("GET", "/v1/order-status/nope"),
        ("GET", f"/v1/orders/{ORDER_ID}"),
        ("GET", "/v1/pay?" + urlencode(QR)),
        ("POST", f"/v1/orders/{ORDER_ID}/payment"),  # no CSRF token: 403
        ("GET", f"/v1/machine/orders/{ORDER_ID}"),  # no machine token: 401
        ("PUT", "/v1/machine/menu"),  # no machine token, no CSRF token either: 401, CSRF-exempt
        ("GET", "/v1/no-such-page"),
        ("GET", "/health"),
    ],
)
async def test_lean_answers_as_the_full_chain_does(lean: LeanASGIHandler, order: Order, method: str, url: str) -> None:
    """Same status and headers as Django's own handler with all of MIDDLEWARE: nothing the pages and
    the API need (security headers, X-Frame-Options, CSRF cookie and check) is lost."""
    full, lean_answer = await request(ASGIHandler(), method, url), await request(lean, method, url)
    assert lean_answer.status_code == full.status_code
    assert sorted(lean_answer.headers.keys()) == sorted(full.headers.keys())
    for header in ("x-frame-options", "x-content-type-options", "referrer-policy", "cache-control", "vary"):
        assert lean_answer.headers.get(header) == full.headers.get(header)
    assert ("csrftoken" in lean_answer.cookies) == ("csrftoken" in full.cookies)


async def test_payment_form_needs_its_csrf_token_on_the_lean_path(lean: LeanASGIHandler, fake: FakeProvider,
                                                                   order: Order) -> None:
    async with client(lean) as http:
        page = await http.get("/v1/pay?" + urlencode(QR))
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert token is not None and "csrftoken" in page.cookies
        # The cookie is Secure (DEBUG is off): a browser sends it over HTTPS; here it is sent by hand.
        cookie = {"cookie": f"csrftoken={page.cookies['csrftoken']}"}
        assert (await http.post(f"/v1/orders/{ORDER_ID}/payment", headers=cookie)).status_code == 403
        paid = await http.post(f"/v1/orders/{ORDER_ID}/payment", headers=cookie,
                               data={"csrfmiddlewaretoken": token.group(1)})
    assert paid.status_code == 303 and paid.headers["location"].startswith(fake_server_url(fake))
    assert len(fake.payments) == 1


def fake_server_url(fake: FakeProvider) -> str:
    return next(iter(fake.payments.values())).confirmation_url.split("/confirm/")[0]


async def test_order_status_is_one_query_on_the_lean_path(lean: LeanASGIHandler, order: Order,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    statements: list[str] = []
    execute = CursorWrapper.execute

    def counting(self: CursorWrapper, sql: str, params: Any = None) -> Any:
        statements.append(sql)
        return execute(self, sql, params)

    monkeypatch.setattr(CursorWrapper, "execute", counting)
    response = await request(lean, "GET", f"/v1/order-status/{ORDER_ID}")
    assert response.json()["status"] == "created"
    assert len(statements) == 1 and '"payments_order"."id" = ' in statements[0]


def thread_connections(handler: LeanASGIHandler) -> list[bool]:
    """Whether each of the pool's threads holds an open database connection between requests."""
    return [done.result(timeout=10)
            for done in idle_threads_run(handler, lambda: connections["default"].connection is not None)]


async def test_no_database_connection_outlives_its_request(lean: LeanASGIHandler, order: Order) -> None:
    """CONN_MAX_AGE = 0 on the lean path: request_finished runs in the request's thread once per
    request and closes the connection there (on PostgreSQL, returns it to the pool)."""
    finished_in: list[str] = []

    def on_finished(**kwargs: Any) -> None:
        finished_in.append(threading.current_thread().name)

    request_finished.connect(on_finished)
    try:
        async with client(lean) as http:
            answers = await asyncio.gather(*(http.get(f"/v1/order-status/{ORDER_ID}") for _ in range(40)))
            assert {answer.status_code for answer in answers} == {200}
            open_after = thread_connections(lean)
            for _ in range(5):  # one after the other, too
                assert (await http.get(f"/v1/order-status/{ORDER_ID}")).status_code == 200
                assert thread_connections(lean) == open_after
    finally:
        request_finished.disconnect(on_finished)
    assert len(finished_in) == 45 and all(name.startswith(THREAD_NAME_PREFIX) for name in finished_in)
    # Django keeps an in-memory SQLite database (the first test pass) open for good: close() spares it.
    database = connections["default"]
    if not (database.vendor == "sqlite" and database.is_in_memory_db()):
        assert open_after == [False] * len(open_after)


async def thread_starts(app: ASGIApp, url: str, *, requests: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads started while `requests` requests for `url` are answered one by one."""
    starts = []
    start = threading.Thread.start

    def counting(thread: threading.Thread) -> None:
        starts.append(thread.name)
        start(thread)

    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", counting)
        async with client(app) as http:
            for _ in range(requests):
                assert (await http.get(url)).status_code == 200
    return starts


async def test_requests_start_no_thread_of_their_own(lean: LeanASGIHandler, order: Order,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Django's handler starts threads for every request; this one checks a pooled thread out per
    request (its sync code and the request signals), started once and reused by the next requests."""
    status = f"/v1/order-status/{ORDER_ID}"
    started = await thread_starts(lean, "/health", requests=20, monkeypatch=monkeypatch)
    started += await thread_starts(lean, status, requests=60, monkeypatch=monkeypatch)
    # One after the other, a request may come before its predecessor's thread is checked back in.
    assert 1 <= len(started) <= 4 and all(name.startswith(THREAD_NAME_PREFIX) for name in started)
    assert len(await thread_starts(ASGIHandler(), status, requests=20, monkeypatch=monkeypatch)) >= 20


class SyncOnlyMiddleware:
    sync_capable, async_capable = True, False

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)


def test_middleware_that_would_need_a_thread_is_refused_on_the_lean_path(settings: Any) -> None:
    settings.LEAN_MIDDLEWARE = [f"{__name__}.SyncOnlyMiddleware"]
    with pytest.raises(ImproperlyConfigured, match="SyncOnlyMiddleware is neither async nor a MiddlewareMixin"):
        LeanHandler()


async def test_a_thread_still_busy_for_an_ended_request_is_not_handed_out(lean: LeanASGIHandler,
                                                                          order: Order) -> None:
    """A sync call that outlives its request (a slow query after a 504) keeps its thread: the next
    requests get other threads, and that thread returns to the pool once the call is done."""
    release = threading.Event()
    ended = lean.threads.request_executor()
    stuck = ended.submit(release.wait, 10)
    # The shape a request timeout leaves: the application cancelled while its request_finished
    # waited in the thread's queue behind the stuck call.
    queued = ended.submit(threading.current_thread)
    assert queued.cancel()
    ended.release()
    try:
        response = await asyncio.wait_for(request(lean, "GET", f"/v1/order-status/{ORDER_ID}"), timeout=5)
        assert response.status_code == 200 and not stuck.done() and lean.threads.busy >= 1
    finally:
        release.set()
    assert stuck.result(timeout=5) is True
    assert idle_threads_run(lean, threading.current_thread) and lean.threads.busy == 0
