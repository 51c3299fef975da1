"""What forged notifications cost (payments/notification_limits.py): one provider read in flight per
payment, none again for the same claim within PAYMENT_PROVIDER_REREAD_SECONDS, a cap a minute on
ids no order holds, and an optional allow-list of senders; genuine notifications apply at once."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from django.http import HttpResponse

from devtools.fake_provider import FakeProvider
from payments import services
from payments.errors import NotificationDeferred
from payments.models import Merchant, Order
from payments.provider import Notification
from tests.support.asgi_client import ClientAt

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

# YooKassa's published notification addresses (yookassa.ru/developers/using-api/webhooks).
YOOKASSA = ("185.71.76.0/27", "185.71.77.0/27", "77.75.153.0/25", "77.75.156.11", "77.75.156.35",
            "77.75.154.128/25", "2a02:5180::/32")


async def started(fake: FakeProvider, order: Order, *, two_stage: bool = False) -> str:
    await Merchant.objects.filter(pk=order.merchant_id).aupdate(two_stage_payments=two_stage)
    await Order.objects.filter(pk=order.pk).aupdate(two_stage=two_stage)
    await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back")
    return next(iter(fake.payments))


def told(event: str, payment_id: str, order: Order | None = None) -> Notification:
    return Notification(event=event, payment_id=payment_id, order_id_hint=order.pk if order else None)


async def notify(event: str, payment_id: str, *, order: Order | None = None, address: str = "127.0.0.1") -> HttpResponse:
    body = {"type": "notification", "event": event,
            "object": {"id": payment_id, "metadata": {"order_id": order.pk} if order else {}}}
    return await ClientAt(address).post("/v1/payments/webhook", data=json.dumps(body), content_type="application/json")


def reads(fake: FakeProvider) -> int:
    return sum(count for call, count in fake.calls.items() if call.startswith("GET /payments/"))


async def test_simultaneous_notifications_of_a_payment_share_one_read(fake: FakeProvider, order: Order) -> None:
    payment_id = await started(fake, order)
    fake.settle(payment_id, "succeeded")
    fake.latency = 0.2  # every notification arrives while the first one's read is on its way
    outcomes = await asyncio.gather(*(services.payment_notification_apply(
        notification=told("payment.succeeded", payment_id)) for _ in range(20)))
    assert sorted(outcomes) == ["paid"] + ["unchanged: order is paid, payment is succeeded"] * 19
    assert reads(fake) == 1


async def test_a_forged_claim_costs_one_read_a_period_and_is_then_deferred(fake: FakeProvider, order: Order,
                                                                          settings: Any) -> None:
    settings.PAYMENT_PROVIDER_REREAD_SECONDS = 60  # longer than the requests below take
    payment_id = await started(fake, order)  # pending: every claim below is false
    first = await notify("payment.succeeded", payment_id)
    assert first.json() == {"status": "unchanged: order is pending, payment is pending"}
    for _ in range(50):
        again = await notify("payment.succeeded", payment_id)
        assert again.status_code == 429
        assert 1 <= int(again["Retry-After"]) <= settings.PAYMENT_PROVIDER_REREAD_SECONDS
    # Each other claim one read more; every event the statuses do not name is one claim, "other".
    for event in ("payment.canceled", "payment.waiting_for_capture", "payment.pending", "payment.bogus", "x.y", "z"):
        for _ in range(5):
            await notify(event, payment_id)
    assert reads(fake) == 1 + 4
    assert (await Order.objects.aget(pk=order.pk)).status == "pending"


async def test_genuine_notifications_apply_at_once_and_their_repeats_read_nothing(fake: FakeProvider,
                                                                                 order: Order) -> None:
    payment_id = await started(fake, order, two_stage=True)
    held = fake.settle(payment_id, "waiting_for_capture")
    assert (await notify(held["event"], payment_id)).json() == {"status": "held"}
    assert (await notify(held["event"], payment_id)).json() == {"status": "unchanged: order is held, "
                                                                          "payment is waiting_for_capture"}
    # The hold released at the provider a moment later: another status, read at once.
    fake.payments[payment_id].status = "canceled"
    assert (await notify("payment.canceled", payment_id)).json() == {"status": "released"}
    assert reads(fake) == 2


async def test_reads_of_ids_no_order_holds_are_capped_a_minute(fake: FakeProvider, order: Order, settings: Any) -> None:
    settings.PAYMENT_PROVIDER_UNKNOWN_READS_PER_MINUTE = 3
    # Made-up payment ids naming a real order (not paid yet) in their metadata: each would be read.
    made_up = [str(uuid.uuid4()) for _ in range(10)]
    answers = [await notify("payment.succeeded", payment_id, order=order) for payment_id in made_up]
    assert [a.json()["status"] for a in answers[:3]] == ["ignored: the provider does not know this payment"] * 3
    assert {a.status_code for a in answers[3:]} == {429}
    assert all(1 <= int(a["Retry-After"]) <= 60 for a in answers[3:])
    assert reads(fake) == 3
    # The cap is for unknown ids: the order's own payment, once stored, is read and applied.
    payment_id = await started(fake, order)
    fake.settle(payment_id, "succeeded")
    assert (await notify("payment.succeeded", payment_id)).json() == {"status": "paid"}


async def test_a_request_cancelled_meanwhile_leaves_its_read_to_the_others(fake: FakeProvider, order: Order) -> None:
    payment_id = await started(fake, order)
    fake.settle(payment_id, "succeeded")
    fake.latency = 0.3
    first = asyncio.create_task(services.payment_notification_apply(notification=told("payment.succeeded", payment_id)))
    await asyncio.sleep(0.1)
    second = asyncio.create_task(services.payment_notification_apply(notification=told("payment.succeeded", payment_id)))
    await asyncio.sleep(0)
    first.cancel()  # its client went away, or its request timed out
    assert await second == "paid"
    assert reads(fake) == 1


async def test_an_allow_list_of_senders_refuses_the_others_before_any_read(fake: FakeProvider, order: Order,
                                                                           settings: Any) -> None:
    settings.PAYMENT_PROVIDER_NOTIFICATION_ADDRESSES = YOOKASSA
    payment_id = await started(fake, order)
    fake.settle(payment_id, "succeeded")
    for outsider in ("127.0.0.1", "185.71.76.32", "2a02:5181::1"):
        assert (await notify("payment.succeeded", payment_id, address=outsider)).status_code == 403
    assert reads(fake) == 0
    assert (await notify("payment.succeeded", payment_id, address="185.71.76.31")).json() == {"status": "paid"}
    assert (await notify("payment.succeeded", payment_id, address="2a02:5180::7")).status_code == 200


def test_notification_deferred_asks_for_whole_seconds() -> None:
    assert NotificationDeferred(retry_after=0.2).retry_after == 1
    assert NotificationDeferred(retry_after=4.1).retry_after == 5
