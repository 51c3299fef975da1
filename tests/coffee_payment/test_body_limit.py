"""BodyLimitMiddleware in-process; tests/integration/test_request_limits.py runs it for real."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest
from django.core.asgi import get_asgi_application

from coffee_payment.asgi_handler import LeanASGIHandler
from coffee_payment.body_limit import BodyLimitMiddleware
from tests.coffee_payment.test_request_timeout import HTTP_SCOPE, Client

pytestmark = pytest.mark.timeout(10)

LIMIT = 1000
POST_SCOPE = {**HTTP_SCOPE, "method": "POST", "path": "/v1/payments/webhook"}


def declaring(length: int) -> dict[str, Any]:
    return {**POST_SCOPE, "headers": [*POST_SCOPE["headers"], (b"content-length", str(length).encode())]}


class Recorder:
    """An application that reads the whole body, then answers 200 with what it got."""

    def __init__(self) -> None:
        self.called = False
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.called = True
        while True:
            message = await receive()
            self.messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read"})


async def test_declared_length_over_the_limit_is_answered_413_without_running_the_app() -> None:
    app, client = Recorder(), Client(b"x" * (LIMIT + 1))
    await BodyLimitMiddleware(app, limit=LIMIT)(declaring(LIMIT + 1), client.receive, client.send)
    assert not app.called
    assert client.status == 413 and client.headers[b"connection"] == b"close"
    assert client.sent[1]["body"] == b"Content Too Large"
    assert client.chunks == [b"x" * (LIMIT + 1)]  # nothing of the body was received


async def test_chunked_body_crossing_the_limit_gets_413_and_the_app_sees_a_disconnect() -> None:
    app, client = Recorder(), Client(b"x" * 600, b"x" * 600, b"x" * 600)
    await BodyLimitMiddleware(app, limit=LIMIT)(POST_SCOPE, client.receive, client.send)
    assert [m["type"] for m in app.messages] == ["http.request", "http.disconnect"]
    assert [m.get("status") for m in client.sent] == [413, None]  # the app's own 200 was dropped
    assert client.chunks == [b"x" * 600]  # reading stopped at the read that crossed


@pytest.mark.parametrize("scope", [POST_SCOPE, declaring(LIMIT)], ids=["chunked", "content-length"])
async def test_body_of_exactly_the_limit_passes_untouched(scope: dict[str, Any]) -> None:
    app, client = Recorder(), Client(b"x" * 400, b"x" * (LIMIT - 400))
    await BodyLimitMiddleware(app, limit=LIMIT)(scope, client.receive, client.send)
    assert sum(len(m["body"]) for m in app.messages) == LIMIT
    assert client.status == 200 and client.sent[1]["body"] == b"read"


async def test_a_response_started_before_the_limit_is_kept() -> None:
    async def streaming_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (message := await receive())["type"] == "http.request":
            await send({"type": "http.response.body", "body": b"+", "more_body": True})
        await send({"type": "http.response.body", "body": b"end"})

    client = Client(b"x" * 600, b"x" * 600, b"x" * 600)
    await BodyLimitMiddleware(streaming_echo, limit=LIMIT)(POST_SCOPE, client.receive, client.send)
    assert client.status == 200
    assert [m.get("body") for m in client.sent[1:]] == [b"+", b"end"]


@pytest.mark.parametrize("handler", [get_asgi_application, LeanASGIHandler], ids=["django", "lean"])
async def test_django_never_spools_a_refused_body(handler: Any, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Django copies the body into a SpooledTemporaryFile; a refused one never reaches its disk."""
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = LIMIT  # as settings.py sets it from the same limit
    rolled_over = []
    rollover = tempfile.SpooledTemporaryFile.rollover

    def watched_rollover(self: tempfile.SpooledTemporaryFile[bytes]) -> None:
        rolled_over.append(self)
        rollover(self)

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", watched_rollover)
    client = Client(*[b"x" * 300] * 10)
    await BodyLimitMiddleware(handler(), limit=LIMIT)(POST_SCOPE, client.receive, client.send)
    assert rolled_over == []
    assert [m.get("status") for m in client.sent] == [413, None]


async def test_other_scopes_pass_through() -> None:
    seen = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await BodyLimitMiddleware(app, limit=LIMIT)({"type": "lifespan"}, Client().receive, Client().send)
    assert seen == ["lifespan"]


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="limit=-1"):
        BodyLimitMiddleware(Recorder(), limit=-1)
