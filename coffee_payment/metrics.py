"""Prometheus metrics of the server: HTTP requests, the workers' drains, the database pool, and the
`/metrics` answer that reports them (and the payments app's) for every Gunicorn worker, on the
metrics port alone (GUNICORN_METRICS_PORT: no Service routes it, whatever a request's headers say).

Cost: in multiprocess mode every observation is a locked write to an mmap'd file, so a request
makes two (its histogram bucket and sum; the histogram's `_count` is the request count). The gauges
(requests in flight, the database pool) are copied from plain counters once a second by each
worker (GaugeSampler), not written per request.

Under Gunicorn, prometheus_client runs in multiprocess mode: config/gunicorn.py exports
GUNICORN_METRICS_DIR as PROMETHEUS_MULTIPROC_DIR before this module is imported, each worker
writes its values to mmap'd files there, and a scrape (answered by any one worker) adds up every
worker's files, the exited workers' counters included. Without that variable (tests, `manage.py`)
the values are this process's own.

Labels are bounded by the code, never by a client: the route is the URL pattern's view name
("payments:order-status" style, or "unmatched" when no pattern was reached), the status is the
one the server answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from django.db import connections
from django.http import HttpRequest
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from coffee_payment.asgi_types import ASGIApp, Message, Receive, Scope, Send, plain_answer

__all__ = [
    "ACCEPT_ERRORS",
    "DRAIN_CANCELLED",
    "DRAINS",
    "GaugeSampler",
    "MetricsPort",
    "OVERLOAD_REFUSALS",
    "REQUEST_TIMEOUTS",
    "RequestMetricsMiddleware",
    "RouteLabelled",
]

log = logging.getLogger(__name__)

# Where Django's request handler leaves the route label in the ASGI scope (RouteLabelled).
ROUTE_KEY = "coffee_payment.route"
UNMATCHED = "unmatched"
# Seconds. Ten buckets: every bucket is one more value per route and status in every worker's file
# (and one more series), and a request costs one write whatever the count. From a probe's
# milliseconds to a provider call near its read timeout; GUNICORN_TIMEOUT's 504s land in +Inf.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

# Its `_count` is the number of requests answered, by route and status.
HTTP_DURATION = Histogram(
    "coffee_http_request_duration_seconds",
    "HTTP requests answered, by route and status, and the time from the request's headers to the end "
    "of its response.",
    ["route", "status"],
    buckets=DURATION_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "coffee_http_requests_in_flight",
    "HTTP requests being served by the live workers (each worker's count, at most a second old).",
    multiprocess_mode="livesum",
)
REQUEST_TIMEOUTS = Counter(
    "coffee_http_request_timeouts_total",
    "Requests not answered within GUNICORN_TIMEOUT: answer 504, 408 (body still arriving) or "
    "aborted (the response had started).",
    ["answer"],
)
DRAINS = Counter(
    "coffee_worker_drains_total",
    "Worker drains, by reason: signal (a stop), max_requests (a recycle) or exit.",
    ["reason"],
)
OVERLOAD_REFUSALS = Counter(
    "coffee_http_overload_refusals_total",
    "Requests answered 503 because the worker had GUNICORN_WORKER_CONNECTIONS connections open or requests in "
    "flight (uvicorn's limit_concurrency).",
)
ACCEPT_ERRORS = Counter(
    "coffee_worker_accept_errors_total",
    "Connections a worker could not accept, by error: EMFILE (out of file descriptors), ENFILE, ENOBUFS, ENOMEM. "
    "Accepting then pauses for a second; the connections wait in the listen backlog.",
    ["error"],
)
DRAIN_CANCELLED = Counter(
    "coffee_worker_drain_cancelled_requests_total",
    "Requests cancelled because a worker's drain reached GUNICORN_GRACEFUL_TIMEOUT.",
)
DB_POOL_CONNECTIONS = Gauge(
    "coffee_db_pool_connections",
    "Database pool connections of the live workers, by state: in_use, idle, max.",
    ["state"],
    multiprocess_mode="livesum",
)
DB_POOL_WAITING = Gauge(
    "coffee_db_pool_requests_waiting",
    "Requests of the live workers waiting for a pooled database connection.",
    multiprocess_mode="livesum",
)
# How often each worker copies its requests in flight and its pool's numbers into the gauges above.
SAMPLE_SECONDS = 1.0


class RouteLabelled:
    """Mixin for Django's request handlers: leave the resolved view's name in the ASGI scope.

    At resolution, not after the response: a request cut short by its timeout still has its route.
    """

    def resolve_request(self, request: HttpRequest) -> Any:
        match = super().resolve_request(request)  # type: ignore[misc]
        route_label_set(request, match.view_name)
        return match


def route_label_set(request: HttpRequest, route: str) -> None:
    scope = getattr(request, "scope", None)  # ASGI requests only
    if scope is not None:
        scope[ROUTE_KEY] = route


class RequestMetricsMiddleware:
    """Count and time every HTTP request by route and status; count those in flight."""

    # This worker's requests in flight (one event loop a worker); GaugeSampler reports it.
    in_flight = 0

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (route, status) -> the labelled histogram: prometheus_client's labels() takes a lock and
        # validates on every call. Bounded: routes and statuses come from the code.
        self._children: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        RequestMetricsMiddleware.in_flight += 1
        try:
            await self.app(scope, receive, send_with_status)
        except BaseException:
            # Uvicorn answers 500 when nothing was sent yet.
            status = status or 500
            raise
        finally:
            RequestMetricsMiddleware.in_flight -= 1
            # 0: the client went away before any answer (a cancelled view sends none).
            key = (scope.get(ROUTE_KEY, UNMATCHED), str(status))
            histogram = self._children.get(key)
            if histogram is None:
                histogram = self._children[key] = HTTP_DURATION.labels(*key)
            histogram.observe(time.perf_counter() - start)


def _registry() -> CollectorRegistry:
    try:
        registry = CollectorRegistry()
        # Reads PROMETHEUS_MULTIPROC_DIR itself; ValueError when the variable is not set.
        MultiProcessCollector(registry)
    except ValueError:
        return REGISTRY
    return registry


_REGISTRY = _registry()
METRICS_PATH = "/metrics"
# More metrics in text format, read when /metrics is scraped (coffee_payment/asgi.py passes them).
ScrapeRead = Callable[[], Awaitable[bytes]]


class MetricsPort:
    """Requests to the metrics port get the metrics (`metrics_answer`), every other port's `app`.

    By the port the connection reached (the socket's, not a header), so /metrics on the public
    port is just an unknown path, and nothing on the metrics port reaches the application.
    """

    def __init__(self, app: ASGIApp, *, port: int, scrape_reads: tuple[ScrapeRead, ...] = ()) -> None:
        self.app = app
        self.port = port
        self.scrape_reads = scrape_reads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if server is not None and server[1] == self.port and self.port and scope["type"] == "http":
            await metrics_answer(scope, receive, send, scrape_reads=self.scrape_reads)
        else:
            await self.app(scope, receive, send)


async def metrics_answer(scope: Scope, receive: Receive, send: Send, *, scrape_reads: tuple[ScrapeRead, ...] = ()
                         ) -> None:
    """GET /metrics: Prometheus text format, every worker's metrics (multiprocess mode) or this
    process's, then what each of `scrape_reads` reads at the scrape (counts from the database: one
    worker answers for the pod, and every pod counts the same rows); 404 for another path, 405 for
    another method."""
    scope[ROUTE_KEY] = "metrics"
    if scope["path"] != METRICS_PATH:
        await plain_answer(send, 404, b"Not Found")
    elif scope["method"] not in ("GET", "HEAD"):
        await plain_answer(send, 405, b"Method Not Allowed", headers=[(b"allow", b"GET, HEAD")])
    else:
        # Reading every worker's files is file I/O: off the event loop.
        body = await asyncio.to_thread(generate_latest, _REGISTRY)
        for read in scrape_reads:
            body += await read()
        await plain_answer(send, 200, body, head=scope["method"] == "HEAD", content_type=CONTENT_TYPE_LATEST.encode())


def _db_pool_sample() -> None:
    # Django keeps its psycopg pools in a class attribute, keyed by alias; `connection.pool` would
    # open one. A worker that has not used the database yet has none.
    pools = getattr(type(connections["default"]), "_connection_pools", {})
    pool = pools.get("default")
    if pool is None:
        return
    stats = pool.get_stats()
    size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
    DB_POOL_CONNECTIONS.labels("in_use").set(size - idle)
    DB_POOL_CONNECTIONS.labels("idle").set(idle)
    DB_POOL_CONNECTIONS.labels("max").set(pool.max_size)
    DB_POOL_WAITING.set(stats.get("requests_waiting", 0))


class GaugeSampler:
    """Copies this worker's requests in flight and database pool numbers into the gauges every
    SAMPLE_SECONDS (lifespan startup to shutdown).

    A scrape is answered by one worker, which cannot read the others' state: each worker writes its
    own. Once a second rather than on every change: a gauge write is an mmap write under a lock.
    """

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                HTTP_IN_FLIGHT.set(RequestMetricsMiddleware.in_flight)
                _db_pool_sample()
            except Exception:  # a metric must never stop the worker
                log.exception("metrics sample failed")
            await asyncio.sleep(SAMPLE_SECONDS)
