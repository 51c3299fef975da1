"""The provider client against the fake provider on a loopback port: protocol, retries, timeouts."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from coffee_payment.request_id import RequestIdMiddleware
from coffee_payment.request_timeout import RequestTimeoutMiddleware
from devtools.fake_provider import FakeProvider
from devtools.processes import free_port
from payments import provider
from payments.errors import InvalidParameter, ProviderRejected, ProviderUnavailable, ShopNotConfigured


async def create(order_id: str = "order-1", amount: int = 15900, shop_id: str = "demo-shop") -> provider.ProviderPayment:
    return await provider.payment_create(
        shop_id=shop_id, order_id=order_id, amount_kopecks=amount, description="Latte, order order-1",
        return_url="http://testserver/v1/orders/order-1",
    )


async def test_create_payment_speaks_the_v3_protocol(fake: FakeProvider) -> None:
    payment = await create(amount=15905)
    assert (payment.status, payment.amount_kopecks, payment.currency, payment.order_id) == ("pending", 15905, "RUB", "order-1")
    assert payment.confirmation_url == f"{fake_base(fake)}/confirm/{payment.id}"
    (shop, key), (body, payment_id) = next(iter(fake.keys.items()))
    assert (shop, key, payment_id) == ("demo-shop", provider.idempotence_key("order-1"), payment.id)
    sent = json.loads(body)
    assert sent["amount"] == {"value": "159.05", "currency": "RUB"}
    assert sent["capture"] is True
    assert sent["confirmation"] == {"type": "redirect", "return_url": "http://testserver/v1/orders/order-1"}
    assert sent["metadata"] == {"order_id": "order-1"}


def fake_base(fake: FakeProvider) -> str:
    confirmation = next(iter(fake.payments.values())).confirmation_url
    return confirmation.rsplit("/confirm/", 1)[0]


def test_idempotence_key_depends_only_on_the_order() -> None:
    assert provider.idempotence_key("order-1") == provider.idempotence_key("order-1") != provider.idempotence_key("order-2")
    assert len(provider.idempotence_key("x" * 64)) <= 64


async def test_creating_twice_for_one_order_is_one_payment(fake: FakeProvider) -> None:
    """Idempotent payment creation: the same key returns the same payment."""
    assert (await create()).id == (await create()).id
    assert len(fake.payments) == 1 and fake.calls["POST /payments"] == 2


async def test_a_5xx_is_retried_with_the_same_key(fake: FakeProvider) -> None:
    fake.fail = "flaky"  # the first attempt of each call fails with 500
    payment = await create()
    assert fake.calls["POST /payments"] == 2
    assert list(fake.payments) == [payment.id]


async def test_persistent_5xx_gives_up_after_the_configured_retries(fake: FakeProvider, settings: Any) -> None:
    settings.PAYMENT_PROVIDER_RETRIES = 2
    fake.fail = "error"
    with pytest.raises(ProviderUnavailable) as unavailable:
        await create()
    assert unavailable.value.detail == "HTTP 500"
    assert fake.calls["POST /payments"] == 3


# How late past a bound a call may end on a loaded machine; below what each bound is cut from.
LATE = 0.3


async def test_read_timeout_is_bounded(fake: FakeProvider, settings: Any) -> None:
    """Provider timeouts: the call gives up after read timeout x attempts, not the provider's pace."""
    settings.PAYMENT_PROVIDER_READ_TIMEOUT, settings.PAYMENT_PROVIDER_RETRIES = 0.2, 1
    fake.fail, fake.hang_seconds = "hang", 1.0
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as unavailable:
        await create()
    assert unavailable.value.detail.startswith("ReadTimeout")
    # Two attempts cut at the read timeout, one back-off between them: well before the hang's 1 s.
    bound = 2 * settings.PAYMENT_PROVIDER_READ_TIMEOUT + settings.PAYMENT_PROVIDER_RETRY_BACKOFF
    assert time.monotonic() - started < bound + LATE
    assert fake.calls["POST /payments"] == 2


async def in_a_request(timeout: float, call: Any) -> Any:
    """`call()` awaited inside a request that RequestTimeoutMiddleware times out after `timeout` s."""
    outcome: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            outcome.append(await call())
        except Exception as error:  # noqa: BLE001 (handed to the test)
            outcome.append(error)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    await RequestTimeoutMiddleware(app, timeout=timeout)({"type": "http", "method": "POST", "path": "/"}, receive, send)
    return outcome[0]


async def test_retries_end_before_the_requests_deadline(fake: FakeProvider, settings: Any) -> None:
    """A hanging provider within a request of 1.5 s: each attempt is cut to what the deadline leaves
    (less the margin for the 503 page), and no attempt starts that cannot fit, whatever the retries."""
    settings.PAYMENT_PROVIDER_READ_TIMEOUT, settings.PAYMENT_PROVIDER_RETRIES = 0.6, 5
    fake.fail, fake.hang_seconds = "hang", 5.0
    started = time.monotonic()
    failed = await in_a_request(1.5, create)
    took = time.monotonic() - started
    assert isinstance(failed, ProviderUnavailable), failed
    # 0.6 s, back-off 0.2 s, then 0.2 s left of the 1.0 s the margin leaves: a third attempt cannot start.
    assert fake.calls["POST /payments"] == 2
    assert failed.detail.endswith("no time left before the deadline")
    assert took <= 1.5 - settings.PAYMENT_PROVIDER_DEADLINE_MARGIN + LATE, took
    # Outside a request, the configured retries and timeouts alone bound the call.
    settings.PAYMENT_PROVIDER_RETRIES = 2
    fake.calls.clear()
    with pytest.raises(ProviderUnavailable):
        await create()
    assert fake.calls["POST /payments"] == 3


async def test_a_deadline_given_to_a_read_cuts_its_attempt(fake: FakeProvider, settings: Any) -> None:
    payment = await create()
    fake.latency, deadline = 1.0, 0.3
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as unanswered:
        await provider.payment_get(shop_id="demo-shop", payment_id=payment.id, retries=0,
                                   deadline=time.monotonic() + deadline)
    assert unanswered.value.detail.startswith("Timeout")
    assert deadline - 0.05 <= time.monotonic() - started < deadline + LATE  # cut at it, not at the 1 s latency


async def test_refused_connection_is_unavailable(fake: FakeProvider, settings: Any) -> None:
    settings.PAYMENT_PROVIDER_URL = f"http://127.0.0.1:{free_port()}/v3"
    with pytest.raises(ProviderUnavailable) as unavailable:
        await create()
    assert unavailable.value.detail.startswith("ConnectError")
    assert unavailable.value.message == "The payment service did not answer. Please try again in a moment."


async def test_wrong_secret_is_a_rejection_not_a_retry(fake: FakeProvider, settings: Any) -> None:
    settings.PAYMENT_PROVIDER_SECRETS = {"demo-shop": "wrong"}
    with pytest.raises(ProviderRejected) as rejected:
        await create()
    assert rejected.value.provider_status == 401


async def test_shop_without_a_secret_is_refused_and_logged(fake: FakeProvider, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="payments.provider"), pytest.raises(ShopNotConfigured):
        await create(shop_id="506751")
    assert "no secret key for shop '506751' in PAYMENT_PROVIDER_SECRETS" in caplog.text
    assert fake.calls["POST /payments"] == 0


async def test_get_payment_reads_the_current_status(fake: FakeProvider) -> None:
    created = await create()
    fake.settle(created.id, "succeeded")
    read = await provider.payment_get(shop_id="demo-shop", payment_id=created.id)
    assert read is not None and (read.id, read.status, read.confirmation_url) == (created.id, "succeeded", None)
    assert await provider.payment_get(shop_id="demo-shop", payment_id="unknown") is None


async def test_a_slow_provider_does_not_block_the_event_loop(fake: FakeProvider) -> None:
    """While a payment waits 0.5 s on the provider, the same loop keeps serving other work."""
    fake.latency = 0.5
    payment = asyncio.ensure_future(create())
    ticks = 0
    for _ in range(200):  # bounded: 2 s at most
        if payment.done():
            break
        await asyncio.sleep(0.01)
        ticks += 1
    await payment
    assert ticks >= 30  # the loop ran other tasks all the while


async def test_one_shared_client_per_event_loop(fake: FakeProvider) -> None:
    loop = asyncio.get_running_loop()
    await create()
    client = provider._clients[loop]
    await create()
    assert provider._clients[loop] is client
    await provider.aclose()
    assert loop not in provider._clients and client.closed


@pytest.mark.parametrize(
    "body",
    [
        {"id": "p", "status": "pending"},
        {"id": "p", "status": "pending", "amount": {"value": "1.005", "currency": "RUB"}},
        {"id": "p", "status": "weird", "amount": {"value": "1.00", "currency": "RUB"}},
        [],
    ],
)
def test_an_unreadable_payment_is_unavailable_not_a_crash(body: Any) -> None:
    with pytest.raises(ProviderUnavailable):
        provider._payment(provider.Answer(200, json.dumps(body).encode()))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "notification body is not JSON"),
        (b'{"type": "payment"}', 'notification body has no "type": "notification"'),
        (b'{"type": "notification", "event": "payment.succeeded"}', 'notification has no "event" string'),
        (b'{"type": "notification", "event": "payment.succeeded", "object": {"id": 5}}', "notification object.id=5 is not a payment id"),
        (b'{"type": "notification", "event": "refund.succeeded", "object": {"id": "r-1"}}',
         "notification object.payment_id=None is not a payment id"),
        (b'{"type": "notification", "event": "refund.succeeded", "object": {"payment_id": "p-1"}}',
         "notification object.id=None is not a refund id"),
        (b'{"type": "notification", "event": "refund.succeeded", "object": {"id": "../payments", "payment_id": "p-1"}}',
         "notification object.id='../payments' is not a refund id"),
        (b'{"type": "notification", "event": "payment.succeeded", "object": {"id": "p-1?limit=100"}}',
         "notification object.id='p-1?limit=100' is not a payment id"),
        (b'{"type": "notification", "event": "payment.succeeded", "object": {"id": "\\ud800"}}',
         "notification object.id='\\ud800' is not a payment id"),
    ],
)
def test_malformed_notification_is_named(body: bytes, message: str) -> None:
    with pytest.raises(InvalidParameter) as refused:
        provider.notification_parse(body)
    assert refused.value.message.startswith(message)


@pytest.mark.parametrize(("hint", "kept"), [("o-1", "o-1"), ("\ud800", None), ("../o-1", None), (5, None)])
def test_an_order_id_hint_that_is_no_order_id_names_no_order(hint: Any, kept: str | None) -> None:
    body = {"type": "notification", "event": "payment.succeeded", "object": {"id": "p-1", "metadata": {"order_id": hint}}}
    assert provider.notification_parse(json.dumps(body).encode()).order_id_hint == kept


def test_notification_gives_the_payment_and_an_order_hint() -> None:
    body = {"type": "notification", "event": "payment.succeeded",
            "object": {"id": "pay-1", "status": "succeeded", "metadata": {"order_id": "o-1"}}}
    assert provider.notification_parse(json.dumps(body).encode()) == provider.Notification(
        event="payment.succeeded", payment_id="pay-1", order_id_hint="o-1"
    )


def test_refund_notification_gives_the_refund_and_its_payment() -> None:
    body = {"type": "notification", "event": "refund.succeeded",
            "object": {"id": "ref-1", "payment_id": "pay-1", "status": "succeeded"}}
    assert provider.notification_parse(json.dumps(body).encode()) == provider.Notification(
        event="refund.succeeded", payment_id="pay-1", order_id_hint=None, refund_id="ref-1"
    )


def test_each_operation_on_an_order_has_its_own_key_and_the_payment_keeps_the_old_one() -> None:
    keys = {operation: provider.idempotence_key("order-1", operation) for operation in provider.OPERATIONS}
    assert len(set(keys.values())) == len(provider.OPERATIONS)
    assert keys["payment"] == str(uuid.uuid5(provider.IDEMPOTENCE_NAMESPACE, "order-1"))
    with pytest.raises(ValueError, match="operation 'charge' is not one of"):
        provider.idempotence_key("order-1", "charge")


async def held(order_id: str = "order-1") -> provider.ProviderPayment:
    payment = await provider.payment_create(
        shop_id="demo-shop", order_id=order_id, amount_kopecks=15900, description="Latte",
        return_url="http://testserver/v1/orders/order-1", capture=False,
    )
    return payment


async def test_a_two_stage_payment_is_held_then_captured_under_its_own_key(fake: FakeProvider) -> None:
    payment = await held()
    sent = json.loads(fake.keys[("demo-shop", provider.idempotence_key("order-1"))][0])
    assert sent["capture"] is False
    fake.settle(payment.id, "waiting_for_capture")
    waiting = await provider.payment_get(shop_id="demo-shop", payment_id=payment.id)
    assert waiting is not None and waiting.status == "waiting_for_capture" and waiting.expires_at is not None
    fake.fail = "flaky"  # the first attempt fails: the retry sends the same key and the same body
    captured = await provider.payment_capture(shop_id="demo-shop", order_id="order-1", payment_id=payment.id,
                                              amount_kopecks=15900)
    again = await provider.payment_capture(shop_id="demo-shop", order_id="order-1", payment_id=payment.id,
                                           amount_kopecks=15900)
    assert captured.status == again.status == "succeeded" and captured.amount_kopecks == 15900
    body, _ = fake.keys[("demo-shop", provider.idempotence_key("order-1", "capture"))]
    assert json.loads(body) == {"amount": {"value": "159.00", "currency": "RUB"}}
    assert fake.calls[f"POST /payments/{payment.id}/capture"] == 4  # two calls, each retried once


async def test_a_hold_is_released_by_cancel(fake: FakeProvider) -> None:
    payment = await held()
    fake.settle(payment.id, "waiting_for_capture")
    released = await provider.payment_cancel(shop_id="demo-shop", order_id="order-1", payment_id=payment.id)
    assert released.status == "canceled"
    # Capturing it now is refused by the provider (4xx): no retry, a rejection.
    with pytest.raises(ProviderRejected) as rejected:
        await provider.payment_capture(shop_id="demo-shop", order_id="order-1", payment_id=payment.id,
                                       amount_kopecks=15900)
    assert rejected.value.provider_status == 400


async def test_a_refund_is_created_once_per_order_and_read_back(fake: FakeProvider) -> None:
    payment = await create()
    fake.settle(payment.id, "succeeded")
    arguments = {"shop_id": "demo-shop", "order_id": "order-1", "payment_id": payment.id, "amount_kopecks": 15900,
                 "description": "Latte, order order-1: could not be made"}
    first = await provider.refund_create(**arguments)
    assert await provider.refund_create(**arguments) == first
    assert (first.payment_id, first.status, first.amount_kopecks, first.currency) == (payment.id, "succeeded", 15900, "RUB")
    assert len(fake.refunds) == 1
    assert await provider.refund_get(shop_id="demo-shop", refund_id=first.id) == first
    assert await provider.refund_get(shop_id="demo-shop", refund_id="unknown") is None


async def test_provider_calls_carry_the_request_id(fake: FakeProvider) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await provider.payment_get(shop_id="demo-shop", payment_id="no-such-payment")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    await request_call(RequestIdMiddleware(app), request_id=b"req-to-provider")
    await provider.payment_get(shop_id="demo-shop", payment_id="no-such-payment")  # outside a request
    assert list(fake.request_ids) == [
        ("GET /payments/no-such-payment", "req-to-provider"),
        ("GET /payments/no-such-payment", None),
    ]


async def request_call(app: Any, *, request_id: bytes) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        pass

    await app({"type": "http", "method": "GET", "path": "/", "headers": [(b"x-request-id", request_id)]}, receive, send)


async def test_each_attempt_is_timed_and_each_failure_counted(fake: FakeProvider) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    errors = ("coffee_provider_errors_total", {"operation": "payment_create", "kind": "http_500"})
    attempts = ("coffee_provider_request_duration_seconds_count", {"operation": "payment_create", "result": "5xx"})
    successes = ("coffee_provider_request_duration_seconds_count", {"operation": "payment_create", "result": "2xx"})
    before = [sample(name, **labels) for name, labels in (errors, attempts, successes)]
    fake.fail = "flaky"  # the first attempt fails with 500, the retry succeeds
    await create()
    after = [sample(name, **labels) for name, labels in (errors, attempts, successes)]
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1]
