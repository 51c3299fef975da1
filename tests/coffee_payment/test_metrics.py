"""Request metrics in-process (coffee_payment/metrics.py): the route label is the URL pattern's name on
the lean chain, the full chain and the probes; a path no pattern matches is "unmatched"."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.db import connections
from prometheus_client import REGISTRY

from coffee_payment import metrics
from coffee_payment.asgi_handler import LeanASGIHandler
from coffee_payment.metrics import MetricsPort, RequestMetricsMiddleware
from coffee_payment.request_timeout import RequestTimeoutMiddleware
from tests.coffee_payment.conftest import close_connections
from tests.coffee_payment.test_request_timeout import HTTP_SCOPE, LIMIT, Client, sleeping_app

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]


@pytest.fixture
def handler() -> Iterator[LeanASGIHandler]:
    handler = LeanASGIHandler()
    yield handler
    close_connections(handler)


def answered(route: str, status: int) -> float:
    labels = {"route": route, "status": str(status)}
    return REGISTRY.get_sample_value("coffee_http_request_duration_seconds_count", labels) or 0.0


@pytest.mark.parametrize(
    ("path", "route", "status"),
    [
        ("/v1/machine/menu", "machine-menu", 401),  # the lean chain (no machine token)
        ("/v1/order-status/no-such-order", "order-status", 404),
        ("/admin/", "admin:index", 302),  # the full chain
        ("/health", "health", 200),  # a probe, answered before any resolution
        ("/v1/../../etc/passwd", "unmatched", 404),
        ("/%F0%9F%92%A5" * 40, "unmatched", 404),
    ],
)
async def test_requests_are_labelled_by_route_name_never_by_path(
    handler: LeanASGIHandler, path: str, route: str, status: int
) -> None:
    before = answered(route, status)
    transport = httpx.ASGITransport(app=RequestMetricsMiddleware(handler))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get(path)).status_code == status
    assert answered(route, status) == before + 1


async def test_a_request_timeout_is_counted_with_its_answer() -> None:
    before = REGISTRY.get_sample_value("coffee_http_request_timeouts_total", {"answer": "504"}) or 0.0
    answered_before = answered("unmatched", 504)
    client = Client()
    app = RequestMetricsMiddleware(RequestTimeoutMiddleware(sleeping_app, timeout=LIMIT))
    await app(HTTP_SCOPE, client.receive, client.send)
    assert client.status == 504
    assert REGISTRY.get_sample_value("coffee_http_request_timeouts_total", {"answer": "504"}) == before + 1
    assert answered("unmatched", 504) == answered_before + 1


@pytest.mark.skipif(connections["default"].vendor != "postgresql", reason="only PostgreSQL has a connection pool")
def test_the_database_pool_is_sampled_into_the_gauges(settings: Any) -> None:
    def run_query() -> None:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
        connections["default"].close()  # back to the pool

    thread = threading.Thread(target=run_query)  # the pool opens on a request thread's first query
    thread.start()
    thread.join(timeout=10)
    metrics._db_pool_sample()
    state = {label: REGISTRY.get_sample_value("coffee_db_pool_connections", {"state": label})
             for label in ("in_use", "idle", "max")}
    assert state["max"] == settings.DATABASES["default"]["OPTIONS"]["pool"]["max_size"]
    assert state["in_use"] == 0 and state["idle"] >= 1
    assert REGISTRY.get_sample_value("coffee_db_pool_requests_waiting") == 0


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
async def test_metrics_answer_on_the_metrics_port_and_never_on_another(handler: LeanASGIHandler, method: str) -> None:
    app = RequestMetricsMiddleware(MetricsPort(handler, port=9464))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport) as client:
        # Whatever a proxy may have added: the port decides.
        headers = {"x-forwarded-for": "203.0.113.9", "forwarded": "for=203.0.113.9", "host": "10.244.1.17"}
        public = await client.request(method, "http://127.0.0.1:8000/metrics", headers=headers)
        scraped = await client.request(method, "http://127.0.0.1:9464/metrics", headers=headers)
        elsewhere = await client.request(method, "http://127.0.0.1:9464/v1/order-status/x")
    assert public.status_code in (400, 404, 405) and b"coffee_http" not in public.content
    assert elsewhere.status_code == 404
    if method in ("GET", "HEAD"):
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain; version=")
        assert (b"coffee_http_request_duration_seconds" in scraped.content) == (method == "GET")
    else:
        assert (scraped.status_code, scraped.headers["allow"]) == (405, "GET, HEAD")
