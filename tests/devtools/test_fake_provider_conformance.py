"""The official `yookassa` SDK judges the fake provider: every operation the server uses, through the
SDK, receipts (54-FZ) and SBP payments and refunds among them.

The fake runs in a thread on a loopback port; the synchronous SDK (requests) calls it from the test
thread. Each answer must parse into the SDK's models and serialise back to exactly what the fake
sent: a field the SDK does not know, or a value it rewrites (an unknown cancellation reason becomes
"unknown"), fails the test. Notifications go to a real webhook receiver and are parsed by the SDK's
WebhookNotificationFactory.
"""

from __future__ import annotations

import datetime
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from yookassa import Configuration, Payment, Refund
from yookassa.client import ApiClient
from yookassa.domain.common import BaseObject, HttpVerb
from yookassa.domain.errors.error import InvalidCredentialsError, InvalidRequestError, NotFoundError
from yookassa.domain.exceptions import BadRequestError, UnauthorizedError
from yookassa.domain.exceptions import NotFoundError as NotFoundException
from yookassa.domain.notification import WebhookNotificationFactory
from yookassa.domain.response import PaymentResponse, RefundResponse

from devtools.fake_provider import COMMISSION, HOLD_SECONDS, RECEIPT_SECONDS, SBP_REFUND_SECONDS
from tests.support.fake_provider import RunningFake, fake_provider_thread

SHOP, SECRET = "conformance-shop", "conformance-secret"
RETURN_URL = "http://shop.test/back"


class Webhook(http.server.ThreadingHTTPServer):
    """Collects the notification bodies POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _WebhookHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/webhook"

    def wait_for(self, count: int) -> list[dict[str, Any]]:
        """The first `count` notifications; API calls notify in the background, so wait (bounded)."""
        deadline = time.monotonic() + 5
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.received) >= count, f"{len(self.received)} notifications arrived, expected {count}"
        return self.received[:count]


class _WebhookHandler(http.server.BaseHTTPRequestHandler):
    server: Webhook

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.server.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        pass


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    server = Webhook()
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def running(webhook: Webhook) -> Iterator[RunningFake]:
    with fake_provider_thread(credentials={SHOP: SECRET}, webhook_url=webhook.url) as fake:
        yield fake


@pytest.fixture
def sent(running: RunningFake, webhook: Webhook, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The SDK configured for the fake; yields every raw answer the SDK parsed, in order."""
    running.app.reset()
    running.app.hold_seconds = HOLD_SECONDS
    running.app.receipt_seconds, running.app.sbp_refund_seconds = RECEIPT_SECONDS, SBP_REFUND_SECONDS
    webhook.received.clear()
    # The SDK's own setting for its base URL (Configuration.api_url, default https://api.yookassa.ru/v3).
    Configuration.configure(SHOP, SECRET, api_url=running.api_url, timeout=1000, max_attempts=1)
    answers: list[Any] = []
    request = ApiClient.request

    def recording(self: ApiClient, *args: Any, **kwargs: Any) -> Any:
        answers.append(request(self, *args, **kwargs))
        return answers[-1]

    monkeypatch.setattr(ApiClient, "request", recording)
    yield answers
    Configuration.configure(None, None)


def same_as_sent(model: BaseObject, sent: list[Any]) -> None:
    """The SDK parsed the fake's last answer whole: serialised back, it is what the fake sent."""
    assert dict(model) == sent[-1]


def create(*, amount: str = "120.00", capture: bool = True, key: str | None = None, **extra: Any) -> PaymentResponse:
    body = {"amount": {"value": amount, "currency": "RUB"}, "capture": capture,
            "confirmation": {"type": "redirect", "return_url": RETURN_URL},
            "description": "Cappuccino, order o-1", "metadata": {"order_id": "o-1"}, **extra}
    return Payment.create(body, key or str(uuid.uuid4()))


def confirm(payment: PaymentResponse, action: str = "succeed") -> None:
    """The customer on the fake's confirmation page."""
    page = httpx.get(payment.confirmation.confirmation_url)
    assert page.status_code == 200 and "width=device-width" in page.text
    answer = httpx.post(payment.confirmation.confirmation_url, data={"action": action})
    assert (answer.status_code, answer.headers["location"]) == (303, RETURN_URL)


def money(value: str) -> Decimal:
    return Decimal(value).quantize(Decimal("0.01"))


def test_one_stage_payment_and_refunds(sent: list[Any], webhook: Webhook) -> None:
    created = create(capture=True)
    same_as_sent(created, sent)
    assert (created.status, created.paid, created.test, created.amount.value) == ("pending", False, True, money("120"))
    assert created.metadata == {"order_id": "o-1", "cms_name": "yookassa_sdk_python"}
    confirm(created)
    paid = Payment.find_one(created.id)
    same_as_sent(paid, sent)
    assert (paid.id, paid.status, paid.paid, paid.refundable, paid.confirmation) == (created.id, "succeeded", True, True, None)
    assert paid.income_amount.value == money("120") - (money("120") * COMMISSION).quantize(Decimal("0.01"))
    assert (paid.payment_method.type, paid.payment_method.saved, paid.payment_method.card.last4) == ("bank_card", False, "4444")
    assert paid.captured_at >= paid.created_at and paid.expires_at is None and paid.refunded_amount is None

    first = Refund.create({"payment_id": paid.id, "amount": {"value": "20.00", "currency": "RUB"},
                           "description": "Drink not made"}, str(uuid.uuid4()))
    same_as_sent(first, sent)
    assert (first.payment_id, first.status, first.amount.value, first.description) == (
        paid.id, "succeeded", money("20"), "Drink not made")
    found = Refund.find_one(first.id)
    same_as_sent(found, sent)
    assert dict(found) == dict(first)
    after = Payment.find_one(paid.id)
    assert (after.refunded_amount.value, after.refundable, after.amount.value) == (money("20"), True, money("120"))
    with pytest.raises(BadRequestError) as too_much:
        Refund.create({"payment_id": paid.id, "amount": {"value": "100.01", "currency": "RUB"}}, str(uuid.uuid4()))
    assert isinstance(too_much.value.error, InvalidRequestError) and too_much.value.error.parameter == "amount.value"
    rest = Refund.create({"payment_id": paid.id, "amount": {"value": "100.00", "currency": "RUB"}}, str(uuid.uuid4()))
    refunded = Payment.find_one(paid.id)
    assert (refunded.refunded_amount.value, refunded.refundable) == (money("120"), False)
    with pytest.raises(BadRequestError):
        Payment.cancel(paid.id, str(uuid.uuid4()))  # a succeeded payment is refunded, not canceled

    events = [(n["event"], n["object"]["id"]) for n in webhook.wait_for(3)]
    assert sorted(events) == sorted([("payment.succeeded", paid.id), ("refund.succeeded", first.id),
                                     ("refund.succeeded", rest.id)])


def test_two_stage_payment_hold_capture_and_cancel(sent: list[Any], webhook: Webhook) -> None:
    held = create(capture=False, amount="150.00")
    before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(milliseconds=1)
    confirm(held)
    after = datetime.datetime.now(datetime.UTC)
    waiting = Payment.find_one(held.id)
    same_as_sent(waiting, sent)
    assert (waiting.status, waiting.paid, waiting.refundable, waiting.captured_at) == ("waiting_for_capture", True, False, None)
    hold = datetime.timedelta(seconds=HOLD_SECONDS)  # from the customer's confirmation
    assert before + hold <= datetime.datetime.fromisoformat(waiting.expires_at) <= after + hold
    with pytest.raises(BadRequestError):
        Refund.create({"payment_id": held.id, "amount": {"value": "1.00", "currency": "RUB"}}, str(uuid.uuid4()))
    with pytest.raises(BadRequestError) as over:
        Payment.capture(held.id, {"amount": {"value": "150.01", "currency": "RUB"}}, str(uuid.uuid4()))
    assert over.value.error.parameter == "amount.value"

    key = str(uuid.uuid4())
    captured = Payment.capture(held.id, {"amount": {"value": "110.00", "currency": "RUB"}}, key)
    same_as_sent(captured, sent)
    assert (captured.status, captured.paid, captured.amount.value, captured.expires_at) == ("succeeded", True, money("110"), None)
    again = Payment.capture(held.id, {"amount": {"value": "110.00", "currency": "RUB"}}, key)
    assert dict(again) == dict(captured)  # the same key answers the same capture, once
    with pytest.raises(BadRequestError) as twice:
        Payment.capture(held.id, None, str(uuid.uuid4()))
    assert "succeeded" in twice.value.error.description

    released = create(capture=False, amount="90.00")
    confirm(released)
    canceled = Payment.cancel(released.id, str(uuid.uuid4()))
    same_as_sent(canceled, sent)
    assert (canceled.status, canceled.paid, canceled.cancellation_details.party, canceled.cancellation_details.reason) == (
        "canceled", False, "merchant", "canceled_by_merchant")
    with pytest.raises(BadRequestError) as late:
        Payment.capture(released.id, None, str(uuid.uuid4()))
    assert isinstance(late.value.error, InvalidRequestError)
    unpaid = Payment.cancel(create().id, str(uuid.uuid4()))  # a pending payment can be canceled too
    assert (unpaid.status, unpaid.cancellation_details.reason) == ("canceled", "canceled_by_merchant")

    events = sorted((n["event"], n["object"]["id"]) for n in webhook.wait_for(5))
    assert events == sorted([("payment.waiting_for_capture", held.id), ("payment.succeeded", held.id),
                             ("payment.waiting_for_capture", released.id), ("payment.canceled", released.id),
                             ("payment.canceled", unpaid.id)])


def test_an_uncaptured_hold_expires(sent: list[Any], running: RunningFake, webhook: Webhook) -> None:
    running.app.hold_seconds = 0.3
    held = create(capture=False)
    confirm(held)
    # Nobody reads it: the fake notifies when the hold expires, as the real provider does.
    assert [n["event"] for n in webhook.wait_for(2)] == ["payment.waiting_for_capture", "payment.canceled"]
    expired = Payment.find_one(held.id)
    same_as_sent(expired, sent)
    assert (expired.status, expired.paid, expired.cancellation_details.party, expired.cancellation_details.reason) == (
        "canceled", False, "yoo_money", "expired_on_capture")
    assert dict(expired) == webhook.received[1]["object"]


def test_customer_cancel_on_the_confirmation_page(sent: list[Any], webhook: Webhook) -> None:
    created = create()
    confirm(created, "cancel")
    canceled = Payment.find_one(created.id)
    same_as_sent(canceled, sent)
    assert (canceled.status, canceled.cancellation_details.reason) == ("canceled", "expired_on_confirmation")
    [notification] = webhook.wait_for(1)
    assert (notification["event"], notification["object"]["id"]) == ("payment.canceled", created.id)


def test_idempotence_key(sent: list[Any], running: RunningFake) -> None:
    first = create(key="order-key")
    assert dict(create(key="order-key")) == dict(first)
    with pytest.raises(BadRequestError) as reused:
        create(key="order-key", amount="1.00")
    assert reused.value.error.parameter == "Idempotence-Key"
    assert list(running.app.payments) == [first.id]


def test_lists_filter_and_paginate(sent: list[Any]) -> None:
    made = [create(amount=f"{100 + n}.00") for n in range(5)]
    paid = made[1:4]
    for payment in paid:
        confirm(payment)
    refunds = [Refund.create({"payment_id": p.id, "amount": {"value": "10.00", "currency": "RUB"}}, str(uuid.uuid4()))
               for p in paid[:2]]

    seen, cursor, pages = [], None, 0
    while pages < 10:
        page = Payment.list({"limit": 2, **({"cursor": cursor} if cursor else {})})
        same_as_sent(page, sent)
        assert page.type == "list" and len(page.items) <= 2
        seen += page.items
        cursor, pages = page.next_cursor, pages + 1
        if not cursor:
            break
    assert pages == 3
    assert [p.id for p in seen] == [p.id for p in reversed(made)]  # newest first, each once
    assert {p.id: p.status for p in seen} == {p.id: Payment.find_one(p.id).status for p in made}

    succeeded = Payment.list({"status": "succeeded", "limit": 100})
    assert {p.id for p in succeeded.items} == {p.id for p in paid} and succeeded.next_cursor is None
    since = made[2].created_at
    newer = Payment.list({"created_at.gte": since, "limit": 100})
    assert {p.id for p in newer.items} == {p.id for p in made if p.created_at >= since}
    assert made[2].id in {p.id for p in newer.items}
    assert made[2].id not in {p.id for p in Payment.list({"created_at.gt": since, "created_at.lt": "2100-01-01T00:00:00.000Z"}).items}
    assert {p.id for p in Payment.list({"captured_at.gte": paid[0].created_at, "payment_method": "bank_card"}).items} == {p.id for p in paid}

    # What reconciliation sends (payments.provider.payment_list): a created_at window, the largest
    # page and the cursor, all at once; every page parses.
    window = {"created_at.gte": made[1].created_at, "created_at.lt": made[4].created_at, "limit": 2}
    first = Payment.list(window)
    same_as_sent(first, sent)
    rest = Payment.list({**window, "cursor": first.next_cursor})
    same_as_sent(rest, sent)
    assert [p.id for p in first.items + rest.items] == [made[3].id, made[2].id, made[1].id]
    assert rest.next_cursor is None

    listed = Refund.list({"payment_id": paid[0].id})
    same_as_sent(listed, sent)
    assert [r.id for r in listed.items] == [refunds[0].id]
    assert [r.id for r in Refund.list({"status": "succeeded", "limit": 1}).items] == [refunds[1].id]
    everything = Refund.list({"limit": 1})
    assert Refund.list({"limit": 1, "cursor": everything.next_cursor}).items[0].id == refunds[0].id

    for params, parameter in [({"limit": 0}, "limit"), ({"status": "paid"}, "status"), ({"cursor": "x"}, "cursor"),
                              ({"created_at.gte": "yesterday"}, "created_at.gte"), ({"amount": "1"}, "amount")]:
        with pytest.raises(BadRequestError) as refused:
            Payment.list(params)
        assert refused.value.error.parameter == parameter


def test_errors_are_api_v3_errors(sent: list[Any]) -> None:
    with pytest.raises(NotFoundException) as missing:
        Payment.find_one(str(uuid.uuid4()))
    assert isinstance(missing.value.error, NotFoundError) and missing.value.content["type"] == "error"
    with pytest.raises(NotFoundException):
        Refund.find_one(str(uuid.uuid4()))
    with pytest.raises(BadRequestError) as unknown:
        Refund.create({"payment_id": str(uuid.uuid4()), "amount": {"value": "1.00", "currency": "RUB"}}, str(uuid.uuid4()))
    assert unknown.value.error.parameter == "payment_id"
    Configuration.configure(SHOP, "wrong-secret", api_url=Configuration.api_url, timeout=1000, max_attempts=1)
    with pytest.raises(UnauthorizedError) as refused:
        Payment.list()
    assert isinstance(refused.value.error, InvalidCredentialsError)


def test_every_notification_parses(sent: list[Any], webhook: Webhook) -> None:
    """Each kind the fake sends, parsed by the SDK's factory into its payment or refund model."""
    one_stage, two_stage, dropped = create(), create(capture=False), create()
    confirm(one_stage)
    confirm(two_stage)
    confirm(dropped, "cancel")
    Payment.capture(two_stage.id, None, str(uuid.uuid4()))
    Refund.create({"payment_id": one_stage.id, "amount": {"value": "120.00", "currency": "RUB"}}, str(uuid.uuid4()))
    received = webhook.wait_for(5)
    kinds = set()
    for body in received:
        notification = WebhookNotificationFactory().create(json.loads(json.dumps(body)))
        model = RefundResponse if notification.event.startswith("refund.") else PaymentResponse
        assert isinstance(notification.object, model) and dict(notification.object) == body["object"]
        kinds.add(notification.event)
    assert kinds == {"payment.succeeded", "payment.waiting_for_capture", "payment.canceled", "refund.succeeded"}



# Receipts (54-FZ) and SBP ---------------------------------------------------------------------

LINE = {"description": "Капучино, средний", "quantity": "1.000", "amount": {"value": "120.00", "currency": "RUB"},
        "vat_code": 11, "payment_subject": "commodity", "payment_mode": "full_payment", "measure": "piece"}
RECEIPT = {"customer": {"email": "ivan@example.ru"}, "items": [LINE], "tax_system_code": 2}


def receipt_for(value: str) -> dict[str, Any]:
    return {**RECEIPT, "items": [{**LINE, "amount": {"value": value, "currency": "RUB"}}]}


def raw_post(path: str, body: dict[str, Any]) -> Any:
    """POST through the SDK's HTTP client without its request models' own checks: what the API
    itself answers to a body the SDK would not send."""
    return ApiClient().request(HttpVerb.POST, path, None, {"Idempotence-Key": str(uuid.uuid4())}, body)


def test_a_receipt_is_registered_with_its_payment_and_refunds_follow_the_receipt_rules(
    sent: list[Any], running: RunningFake, webhook: Webhook
) -> None:
    running.app.receipt_seconds = 0
    created = create(receipt=RECEIPT)
    same_as_sent(created, sent)
    assert created.receipt_registration == "pending"
    confirm(created)
    paid = Payment.find_one(created.id)
    same_as_sent(paid, sent)
    assert (paid.status, paid.receipt_registration) == ("succeeded", "succeeded")

    # A part needs the receipt of that part; the whole, none (the provider returns the payment's).
    with pytest.raises(BadRequestError) as partial:
        Refund.create({"payment_id": paid.id, "amount": {"value": "20.00", "currency": "RUB"}}, str(uuid.uuid4()))
    assert partial.value.error.parameter == "receipt"
    part = Refund.create({"payment_id": paid.id, "amount": {"value": "20.00", "currency": "RUB"},
                          "receipt": receipt_for("20.00")}, str(uuid.uuid4()))
    same_as_sent(part, sent)
    assert (part.status, part.receipt_registration) == ("succeeded", "pending")
    assert Refund.find_one(part.id).receipt_registration == "succeeded"
    with pytest.raises(BadRequestError):
        Refund.create({"payment_id": paid.id, "amount": {"value": "100.00", "currency": "RUB"}}, str(uuid.uuid4()))

    whole = create(receipt=RECEIPT)
    confirm(whole)
    full = Refund.create({"payment_id": whole.id, "amount": {"value": "120.00", "currency": "RUB"}}, str(uuid.uuid4()))
    same_as_sent(full, sent)
    assert full.receipt_registration == "pending"


def test_a_held_receipts_payment_is_captured_whole_without_a_receipt_or_in_part_with_one(sent: list[Any]) -> None:
    whole, part = create(capture=False, receipt=RECEIPT), create(capture=False, receipt=RECEIPT)
    confirm(whole)
    confirm(part)
    assert Payment.find_one(whole.id).receipt_registration == "pending"
    captured = Payment.capture(whole.id, {"amount": {"value": "120.00", "currency": "RUB"}}, str(uuid.uuid4()))
    same_as_sent(captured, sent)
    with pytest.raises(BadRequestError) as without:
        Payment.capture(part.id, {"amount": {"value": "100.00", "currency": "RUB"}}, str(uuid.uuid4()))
    assert without.value.error.parameter == "receipt"
    less = Payment.capture(part.id, {"amount": {"value": "100.00", "currency": "RUB"}, "receipt": receipt_for("100.00")},
                           str(uuid.uuid4()))
    assert (less.status, less.amount.value) == ("succeeded", money("100"))


@pytest.mark.parametrize(("receipt", "parameter"), [
    ({**RECEIPT, "customer": {}}, "receipt.customer"),
    (receipt_for("119.99"), "receipt.items"),
    ({**RECEIPT, "items": [{**LINE, "vat_code": 13}]}, "receipt.items[0].vat_code"),
])
def test_a_receipt_is_checked_as_the_api_does(sent: list[Any], receipt: dict[str, Any], parameter: str) -> None:
    body = {"amount": {"value": "120.00", "currency": "RUB"}, "capture": True, "receipt": receipt,
            "confirmation": {"type": "redirect", "return_url": RETURN_URL}}
    with pytest.raises(BadRequestError) as refused:
        raw_post("/payments", body)
    assert isinstance(refused.value.error, InvalidRequestError) and refused.value.error.parameter == parameter
    if not receipt["customer"]:  # the SDK's own models refuse it before sending
        with pytest.raises(ValueError, match="email and phone values are empty"):
            Payment.create(body, str(uuid.uuid4()))


def test_sbp_pays_in_one_stage_and_refunds_through_sbp(sent: list[Any], running: RunningFake, webhook: Webhook) -> None:
    running.app.sbp_refund_seconds = 0.2
    with pytest.raises(BadRequestError) as held:
        create(capture=False, payment_method_data={"type": "sbp"})
    assert held.value.error.parameter == "capture"
    created = create(payment_method_data={"type": "sbp"})
    same_as_sent(created, sent)
    assert (created.payment_method.type, created.status) == ("sbp", "pending")
    confirm(created)
    paid = Payment.find_one(created.id)
    same_as_sent(paid, sent)
    assert (paid.status, paid.payment_method.type, paid.payment_method.payer_bank_details.bic) == (
        "succeeded", "sbp", "044525225")
    assert paid.payment_method.sbp_operation_id

    refund = Refund.create({"payment_id": paid.id, "amount": {"value": "120.00", "currency": "RUB"}}, str(uuid.uuid4()))
    same_as_sent(refund, sent)
    assert (refund.status, refund.refund_method.type) == ("pending", "sbp")
    [paid_event, refunded] = webhook.wait_for(2)
    assert (paid_event["event"], refunded["event"]) == ("payment.succeeded", "refund.succeeded")
    notification = WebhookNotificationFactory().create(json.loads(json.dumps(refunded)))
    assert isinstance(notification.object, RefundResponse) and dict(notification.object) == refunded["object"]
    assert Refund.find_one(refund.id).status == "succeeded"


def test_the_customer_chooses_sbp_on_the_page_of_a_payment_that_names_no_method(sent: list[Any]) -> None:
    created = create()
    page = httpx.get(created.confirmation.confirmation_url).text
    assert 'value="sbp"' in page and 'value="bank_card"' in page
    answer = httpx.post(created.confirmation.confirmation_url, data={"action": "succeed", "method": "sbp"})
    assert answer.status_code == 303
    paid = Payment.find_one(created.id)
    same_as_sent(paid, sent)
    assert paid.payment_method.type == "sbp"
    assert {p.id for p in Payment.list({"payment_method": "sbp"}).items} == {created.id}
