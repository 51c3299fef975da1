"""The provider client's receipts and payment methods against the fake provider: what each call
carries, and what the server reads back (the method paid with, the receipt's registration)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from devtools.fake_provider import FakeProvider
from payments import provider
from payments.errors import ProviderRejected

RECEIPT = {"customer": {"email": "ivan@example.ru"}, "items": [
    {"description": "Latte, большой", "quantity": "1.000", "amount": {"value": "159.00", "currency": "RUB"},
     "vat_code": 11, "payment_subject": "commodity", "payment_mode": "full_payment", "measure": "piece"}]}


async def create(**extra: Any) -> provider.ProviderPayment:
    return await provider.payment_create(
        shop_id="demo-shop", order_id="order-1", amount_kopecks=15900, description="Latte, order order-1",
        return_url="http://testserver/v1/orders/order-1", **extra,
    )


def sent(fake: FakeProvider, index: int = 0) -> dict[str, Any]:
    return json.loads(list(fake.keys.values())[index][0])


async def test_without_a_receipt_or_a_method_the_body_is_as_before(fake: FakeProvider) -> None:
    await create()
    assert set(sent(fake)) == {"amount", "capture", "confirmation", "description", "metadata"}


async def test_a_payment_carries_its_receipt_and_its_method_and_reads_them_back(fake: FakeProvider) -> None:
    fake.receipt_seconds = 0
    created = await create(receipt=RECEIPT, method_type="sbp")
    assert sent(fake)["receipt"] == RECEIPT and sent(fake)["payment_method_data"] == {"type": "sbp"}
    assert (created.method_type, created.receipt_registration) == ("sbp", "pending")
    fake.settle(created.id, "succeeded")
    paid = await provider.payment_get(shop_id="demo-shop", payment_id=created.id)
    assert paid is not None and (paid.status, paid.method_type, paid.receipt_registration) == ("succeeded", "sbp", "succeeded")


async def test_an_sbp_payment_is_never_held() -> None:
    with pytest.raises(ValueError, match="SBP payment cannot be held"):
        await create(method_type="sbp", capture=False)


async def test_a_part_captured_or_refunded_carries_the_receipt_of_that_part(fake: FakeProvider) -> None:
    held = await create(receipt=RECEIPT, capture=False)
    fake.settle(held.id, "waiting_for_capture")
    part = {**RECEIPT, "items": [{**RECEIPT["items"][0], "amount": {"value": "100.00", "currency": "RUB"}}]}
    captured = await provider.payment_capture(shop_id="demo-shop", order_id="order-1", payment_id=held.id,
                                              amount_kopecks=10000, receipt=part)
    assert captured.amount_kopecks == 10000 and sent(fake, 1)["receipt"] == part
    refund = await provider.refund_create(shop_id="demo-shop", order_id="order-1", payment_id=held.id,
                                          amount_kopecks=10000, description="not made")
    assert "receipt" not in sent(fake, 2) and refund.receipt_registration == "pending"


async def test_a_refused_receipt_is_logged_without_the_customers_contact(
    fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    bad = {**RECEIPT, "customer": {"phone": "+7 900 123-45-67"}}
    with caplog.at_level(logging.ERROR, logger="payments.provider"), pytest.raises(ProviderRejected):
        await create(receipt=bad)
    assert "receipt.customer.phone" in caplog.text and "123-45-67" not in caplog.text


def test_an_unknown_receipt_status_is_logged_and_not_kept(caplog: pytest.LogCaptureFixture) -> None:
    body = {"id": "p-1", "status": "succeeded", "amount": {"value": "1.00", "currency": "RUB"},
            "receipt_registration": "lost", "payment_method": {"type": "sbp", "id": "p-1", "saved": False}}
    payment = provider._payment(provider.Answer(200, json.dumps(body).encode()))
    assert (payment.method_type, payment.receipt_registration) == ("sbp", None)
    assert "receipt_registration 'lost'" in caplog.text


def test_the_rejection_log_scrubs_contacts_the_provider_quotes(caplog: pytest.LogCaptureFixture) -> None:
    quoted = {"type": "error", "code": "invalid_request", "parameter": "receipt.customer.email",
              "description": "ivan@example.ru is not deliverable"}
    provider._rejected(provider.Answer(400, json.dumps(quoted).encode()), "payment for order 'o-1'")
    assert "receipt.customer.email" in caplog.text and "ivan@example.ru" not in caplog.text
