"""RequestTimeoutMiddleware in-process (R2.3); tests/integration/test_request_timeout.py runs it for real."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from django.core.asgi import get_asgi_application
from django.core.signals import request_finished
from django.http import HttpRequest, HttpResponse
from django.urls import path

from coffee_payment.asgi_handler import LeanASGIHandler
from coffee_payment.request_timeout import (
    DISCONNECT_GRACE, RequestTimeoutError, RequestTimeoutMiddleware, request_deadline,
)

pytestmark = pytest.mark.timeout(10)

LIMIT = 0.2
HTTP_SCOPE = {"type": "http", "method": "GET", "path": "/", "headers": [(b"host", b"testserver")],
              "query_string": b"", "http_version": "1.1", "scheme": "http", "root_path": "",
              "server": ("testserver", 80), "client": ("127.0.0.1", 5000), "asgi": {"version": "3.0"}}


class Client:
    """An ASGI server's side of one request: a body in `chunks`, then nothing until a disconnect."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks) or [b""]
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.chunks:
            body = self.chunks.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(self.chunks)}
        await asyncio.sleep(3600)  # like uvicorn: the next message is the client's disconnect
        raise AssertionError("unreachable")

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return self.sent[0]["status"]

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])


async def sleeping_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await asyncio.sleep(3600)


async def test_the_request_and_what_it_starts_know_its_deadline() -> None:
    seen: list[float | None] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(request_deadline())
        seen.append(await asyncio.ensure_future(asyncio.sleep(0, request_deadline())))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    started = time.monotonic()
    await RequestTimeoutMiddleware(app, timeout=LIMIT)(HTTP_SCOPE, Client().receive, Client().send)
    assert seen[0] == seen[1] and seen[0] is not None
    assert started + LIMIT <= seen[0] <= time.monotonic() + LIMIT
    assert request_deadline() is None  # outside the request


async def test_fast_request_passes_untouched() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["body"] == b"hi"
        await send({"type": "http.response.start", "status": 201, "headers": [(b"x", b"1")]})
        await send({"type": "http.response.body", "body": b"done"})

    client = Client(b"hi")
    await RequestTimeoutMiddleware(app, timeout=LIMIT)(HTTP_SCOPE, client.receive, client.send)
    assert client.sent == [{"type": "http.response.start", "status": 201, "headers": [(b"x", b"1")]},
                           {"type": "http.response.body", "body": b"done"}]


async def test_slow_application_gets_504_with_connection_close_at_the_limit() -> None:
    client = Client()
    started = time.monotonic()
    await RequestTimeoutMiddleware(sleeping_app, timeout=LIMIT)(HTTP_SCOPE, client.receive, client.send)
    elapsed = time.monotonic() - started
    assert client.status == 504
    assert client.headers[b"connection"] == b"close"
    assert client.sent[1]["body"] == b"Gateway Timeout"
    # The answer goes out at the limit; an application deaf to the disconnect is cancelled after the grace.
    assert LIMIT + DISCONNECT_GRACE <= elapsed < LIMIT + DISCONNECT_GRACE + 1


async def test_slow_body_gets_408() -> None:
    async def reads_the_whole_body(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass

    class SlowUpload(Client):
        async def receive(self) -> dict[str, Any]:
            await asyncio.sleep(0.05 if len(self.chunks) > 1 else 3600)
            return await super().receive()

    client = SlowUpload(b"a", b"b", b"never sent")
    await RequestTimeoutMiddleware(reads_the_whole_body, timeout=LIMIT)(HTTP_SCOPE, client.receive, client.send)
    assert client.status == 408
    assert client.headers[b"connection"] == b"close"


async def test_deadline_after_the_response_started_raises_and_drops_later_sends() -> None:
    finished = asyncio.Event()

    async def stalls_mid_body(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"half", "more_body": True})
        try:
            await asyncio.sleep(3600)
        finally:
            finished.set()

    client = Client()
    with pytest.raises(RequestTimeoutError):
        await RequestTimeoutMiddleware(stalls_mid_body, timeout=LIMIT)(HTTP_SCOPE, client.receive, client.send)
    await asyncio.wait_for(finished.wait(), 1)
    assert [m.get("status", m.get("body")) for m in client.sent] == [200, b"half"]


async def test_lifespan_passes_through_untimed() -> None:
    seen = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(LIMIT * 2)
        seen.append(scope["type"])

    await RequestTimeoutMiddleware(app, timeout=LIMIT)({"type": "lifespan"}, Client().receive, Client().send)
    assert seen == ["lifespan"]


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="allowed: > 0"):
        RequestTimeoutMiddleware(sleeping_app, timeout=0)


VIEW_CANCELLED = asyncio.Event()


async def slow_view(request: HttpRequest) -> HttpResponse:
    try:
        await asyncio.sleep(3600)  # a slow upstream call
    except asyncio.CancelledError:
        VIEW_CANCELLED.set()
        raise
    return HttpResponse("never")


urlpatterns = [path("slow", slow_view), path("v1/slow", slow_view)]


async def test_django_cancels_the_view_through_its_own_disconnect_handling(settings: Any) -> None:
    """The application sees a client disconnect: Django cancels the view and sends request_finished."""
    settings.ROOT_URLCONF = __name__
    VIEW_CANCELLED.clear()
    finished = []

    def on_finished(**kwargs: Any) -> None:
        finished.append(True)

    request_finished.connect(on_finished)
    client = Client()
    started = time.monotonic()
    try:
        await RequestTimeoutMiddleware(get_asgi_application(), timeout=LIMIT)(
            {**HTTP_SCOPE, "path": "/slow"}, client.receive, client.send)
    finally:
        request_finished.disconnect(on_finished)
    assert client.status == 504
    assert VIEW_CANCELLED.is_set() and finished
    # Django stopped on the disconnect, well before the grace after which the task is cancelled.
    assert time.monotonic() - started < LIMIT + DISCONNECT_GRACE


async def test_the_lean_path_cancels_the_view_the_same_way(settings: Any) -> None:
    """/v1/ is a lean path (coffee_payment/asgi_handler.py): it keeps Django's disconnect watch."""
    settings.ROOT_URLCONF = __name__
    VIEW_CANCELLED.clear()
    client = Client()
    started = time.monotonic()
    await RequestTimeoutMiddleware(LeanASGIHandler(), timeout=LIMIT)(
        {**HTTP_SCOPE, "path": "/v1/slow"}, client.receive, client.send)
    assert client.status == 504 and VIEW_CANCELLED.is_set()
    assert time.monotonic() - started < LIMIT + DISCONNECT_GRACE
