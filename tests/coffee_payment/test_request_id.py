"""X-Request-ID: kept when valid, generated otherwise, echoed, on every log line of the request
(sync code included) and on the provider calls it makes."""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from coffee_payment.asgi_types import Message, Receive, Scope, Send
from coffee_payment.request_id import HEADER, RequestIdFilter, RequestIdMiddleware, request_id_current

GENERATED = re.compile(r"[0-9a-f]{32}")
log = logging.getLogger("tests.request_id")


async def call(app: Any, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/", "headers": headers}, receive, send)
    return sent


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def echoed(sent: list[Message]) -> str:
    values = [value for name, value in sent[0]["headers"] if name == HEADER]
    assert len(values) == 1
    return values[0].decode()


@pytest.mark.parametrize("given", ["abc-123", "A.b_C-9", "x" * 128, "0"])
async def test_a_valid_request_id_is_kept_and_echoed(given: str) -> None:
    sent = await call(RequestIdMiddleware(answer), [(b"host", b"x"), (HEADER, given.encode())])
    assert echoed(sent) == given
    assert (b"content-type", b"text/plain") in sent[0]["headers"]


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(HEADER, b"")],
        [(HEADER, b"x" * 129)],
        [(HEADER, b"has space")],
        [(HEADER, b"line\r\nbreak")],
        [(HEADER, "caf\u00e9".encode())],
        [(HEADER, b"a"), (HEADER, b"b")],
    ],
    ids=["missing", "empty", "too-long", "space", "crlf", "non-ascii", "repeated"],
)
async def test_an_invalid_or_missing_request_id_is_replaced_by_a_new_one(headers: list[tuple[bytes, bytes]]) -> None:
    first = echoed(await call(RequestIdMiddleware(answer), headers))
    second = echoed(await call(RequestIdMiddleware(answer), headers))
    assert GENERATED.fullmatch(first) and GENERATED.fullmatch(second)
    assert first != second


async def test_every_log_line_of_the_request_carries_its_id_sync_code_included(caplog: pytest.LogCaptureFixture) -> None:
    threads: list[str] = []

    def sync_work() -> None:
        threads.append(threading.current_thread().name)
        log.warning("from the request's sync code")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        log.warning("from the request's task")
        await sync_to_async(sync_work)()
        await answer(scope, receive, send)

    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.WARNING, logger=log.name):
        await call(RequestIdMiddleware(app), [(HEADER, b"req-1")])
        log.warning("after the request")
    by_message = {record.getMessage(): getattr(record, "request_id", None) for record in caplog.records}
    assert by_message == {
        "from the request's task": "req-1",
        "from the request's sync code": "req-1",
        "after the request": None,
    }
    assert threads and threads[0] != threading.current_thread().name
    assert request_id_current() is None

