"""Refunds by staff: in full or in part, of orders whose money was taken and kept, through the provider
under a key of their own, never more than was paid, with receipts, recorded in the event log."""

from __future__ import annotations

import datetime
import json
import re
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from devtools.fake_provider import FakeProvider
from payments import reconciliation, services
from payments.errors import ProviderUnavailable, RefundNotAllowed
from payments.models import Merchant, Order, OrderEvent, StaffRefund
from payments.provider import Notification
from tests.payments.conftest import paid_order
from tests.payments.test_admin import paid_at_the_fake

pytestmark = pytest.mark.django_db(transaction=True)

PRICE = 15900  # machine-1's medium Cappuccino
EMAIL = "ivan.petrov@example.ru"


async def made(fake: FakeProvider, order: Order, *, two_stage: bool = False) -> str:
    """The order paid, made and (two-stage) captured: successful; its payment's id."""
    payment_id = await paid_order(fake, order, two_stage=two_stage)
    await sync_to_async(services.order_mark_make_pending)(order_id=order.pk)
    assert (await services.order_mark_successful_and_capture(order_id=order.pk)).status == "successful"
    return payment_id


async def refund(order: Order, kopecks: int, *, key: uuid.UUID | None = None, reason: str = "goodwill") -> StaffRefund:
    return await services.order_staff_refund(order_id=order.pk, key=key or uuid.uuid4(), amount_kopecks=kopecks,
                                             reason=reason, user_id=7, username="anna")


def refund_bodies(fake: FakeProvider) -> list[dict[str, Any]]:
    return [json.loads(body) for (_shop, _key), (body, object_id) in fake.keys.items() if object_id in fake.refunds]


async def stored(order: Order) -> tuple[str, int]:
    row = await Order.objects.aget(pk=order.pk)
    return row.status, row.refunded_kopecks


async def staff_log(order: Order) -> list[tuple[Any, ...]]:
    rows = OrderEvent.objects.filter(order_id=order.pk, operation__startswith="staff_refund").order_by("id")
    return [row async for row in rows.values_list("operation", "status_from", "status_to", "amount_kopecks",
                                                  "refunded_kopecks", "detail", "cause")]


@pytest.mark.parametrize("two_stage", [False, True])
async def test_a_whole_refund_of_a_drink_made_returns_the_price_and_ends_the_order_refunded(
    fake: FakeProvider, order: Order, two_stage: bool
) -> None:
    payment_id = await made(fake, order, two_stage=two_stage)
    done = await refund(order, PRICE)
    assert (done.status, done.amount_kopecks, done.username, done.refund_id) == ("succeeded", PRICE, "anna",
                                                                                  next(iter(fake.refunds)))
    # Under its own key, the whole payment's: no receipt needed.
    assert fake.keys[("demo-shop", str(done.pk))][1] == done.refund_id
    [body] = refund_bodies(fake)
    assert (body["payment_id"], body["amount"], "receipt" in body) == (payment_id, {"value": "159.00", "currency": "RUB"},
                                                                       False)
    assert body["description"] == f"Order {order.pk}: goodwill"
    assert await stored(order) == ("refunded", PRICE)
    assert await staff_log(order) == [
        ("staff_refund", "successful", "successful", PRICE, 0, "goodwill", "unrecorded"),
        ("staff_refund_answer", "successful", "refunded", PRICE, PRICE, "refund succeeded", "unrecorded"),
    ]
    with pytest.raises(RefundNotAllowed, match="is “Refunded”: staff refund only an order whose money was taken"):
        await refund(order, 1)


async def test_parts_add_up_to_the_price_and_never_more(fake: FakeProvider, order: Order) -> None:
    await made(fake, order)
    assert (await refund(order, 5000)).status == "succeeded"
    assert await stored(order) == ("successful", 5000)  # a part leaves the status
    with pytest.raises(RefundNotAllowed, match=re.escape("109.00\xa0₽ is left of its price 159.00\xa0₽")):
        await refund(order, 10901)
    assert len(fake.refunds) == 1
    await refund(order, 10900)
    assert await stored(order) == ("refunded", PRICE)
    assert sum(r.amount for r in fake.refunds.values()) * 100 == PRICE


@pytest.mark.parametrize("status", ["paid", "make_pending", "make_failed", "refund_pending"])
async def test_money_on_its_way_back_or_into_a_drink_is_not_staffs_to_refund(
    fake: FakeProvider, order: Order, status: str
) -> None:
    await paid_order(fake, order, two_stage=False)
    if status != "paid":
        await sync_to_async(services.order_mark_make_pending)(order_id=order.pk)
    if status in ("make_failed", "refund_pending"):
        await sync_to_async(services.order_mark_make_failed)(order_id=order.pk)
    if status == "refund_pending":
        await sync_to_async(services.order_mark_money_return_due)(order_id=order.pk)
    with pytest.raises(RefundNotAllowed, match="staff refund only an order whose money was taken and kept"):
        await refund(order, 100)
    assert not fake.refunds and not await StaffRefund.objects.aexists()


async def test_a_refused_automatic_refund_is_returned_by_staff(fake: FakeProvider, order: Order) -> None:
    payment_id = await paid_order(fake, order, two_stage=False)
    fake.payments[payment_id].refunded = fake.payments[payment_id].amount  # refunded from the dashboard meanwhile
    assert (await services.order_mark_make_failed_and_return_money(order_id=order.pk)).status == "refund_failed"
    fake.payments[payment_id].refunded = 0
    await refund(order, PRICE)
    assert await stored(order) == ("refunded", PRICE)


async def test_a_part_of_a_receipt_payment_carries_its_receipt_the_whole_none(fake: FakeProvider, order: Order) -> None:
    await Merchant.objects.aupdate(receipts_enabled=True, vat_code=11)
    receipt = {"items": [{"description": "Cappuccino, средний", "quantity": "1.000",
                          "amount": {"value": "159.00", "currency": "RUB"}, "vat_code": 11,
                          "payment_subject": "commodity", "payment_mode": "full_payment", "measure": "piece"}]}
    await Order.objects.filter(pk=order.pk).aupdate(receipt=receipt, customer_contact=EMAIL)
    await made(fake, order)
    await refund(order, 5000)
    await refund(order, 10900)
    part, rest = refund_bodies(fake)
    assert part["receipt"] == {"customer": {"email": EMAIL}, "items": [
        {**receipt["items"][0], "amount": {"value": "50.00", "currency": "RUB"}}]}
    assert rest["receipt"]["items"][0]["amount"] == {"value": "109.00", "currency": "RUB"}
    other = await Order.objects.aget(pk=order.pk)
    assert other.status == "refunded"


async def test_a_part_cannot_be_refunded_once_the_receipts_contact_is_erased(fake: FakeProvider, order: Order) -> None:
    receipt = {"items": [{"description": "Cappuccino", "quantity": "1.000", "amount": {"value": "159.00",
                                                                                        "currency": "RUB"},
                          "vat_code": 11}]}
    await Order.objects.filter(pk=order.pk).aupdate(receipt=receipt, customer_contact=EMAIL)
    await made(fake, order)
    await Order.objects.filter(pk=order.pk).aupdate(customer_contact="")  # ORDER_CONTACT_RETENTION_DAYS later
    with pytest.raises(RefundNotAllowed, match="whose contact was erased 30 days after the order"):
        await refund(order, 5000)
    assert (await refund(order, PRICE)).status == "succeeded"  # the whole payment needs no receipt


async def test_the_same_form_twice_is_one_refund(fake: FakeProvider, order: Order) -> None:
    await made(fake, order)
    key = uuid.uuid4()
    first, again = await refund(order, 5000, key=key), await refund(order, 5000, key=key)
    assert first.pk == again.pk == key and len(fake.refunds) == 1 and await stored(order) == ("successful", 5000)
    with pytest.raises(RefundNotAllowed, match="already used for another refund"):
        await refund(order, 6000, key=key)


async def test_an_unanswered_refund_is_sent_again_under_its_key_by_reconciliation(
    fake: FakeProvider, order: Order, settings: Any
) -> None:
    await made(fake, order)
    fake.fail = "error"
    with pytest.raises(ProviderUnavailable):
        await refund(order, 5000)
    [requested] = [r async for r in StaffRefund.objects.all()]
    assert requested.status == "requested" and not fake.refunds
    # Counted against what is left meanwhile: no second refund of the same money.
    with pytest.raises(RefundNotAllowed, match=re.escape("109.00\xa0₽ is left")):
        await refund(order, 11000)
    fake.fail = "none"
    later = timezone.now() + datetime.timedelta(minutes=settings.ORDER_RECONCILE_AFTER_MINUTES + 1)
    assert await reconciliation.staff_refunds_reconcile(now=later) == {"staff refund succeeded": 1}
    assert fake.keys[("demo-shop", str(requested.pk))][1] == next(iter(fake.refunds))
    assert await stored(order) == ("successful", 5000)
    assert await reconciliation.staff_refunds_reconcile(now=later) == {}


async def test_a_refund_the_provider_refuses_returns_nothing_and_says_so(fake: FakeProvider, order: Order) -> None:
    payment_id = await made(fake, order)
    fake.payments[payment_id].refunded = fake.payments[payment_id].amount  # from the provider's dashboard
    done = await refund(order, 5000)
    assert done.status == "refused" and await stored(order) == ("successful", 0)
    assert (await staff_log(order))[-1][-2] == "refused: HTTP 400"


async def test_an_sbp_refund_completes_when_the_bank_confirms(fake: FakeProvider, order: Order, settings: Any) -> None:
    await Merchant.objects.aupdate(payment_methods="sbp")
    await Order.objects.filter(pk=order.pk).aupdate(requested_method="sbp")
    payment_id = await made(fake, order)
    fake.sbp_refund_seconds = 3600
    pending = await refund(order, 5000)
    assert pending.status == "pending" and await stored(order) == ("successful", 0)
    fake.sbp_refund_seconds = 0
    told = Notification(event="refund.succeeded", payment_id=payment_id, order_id_hint=None, refund_id=pending.refund_id)
    assert await services.payment_notification_apply(notification=told) == "staff refund succeeded"
    assert await stored(order) == ("successful", 5000)
    assert await services.payment_notification_apply(notification=told) == "staff refund succeeded"  # again: no change
    assert await stored(order) == ("successful", 5000)


# The admin ------------------------------------------------------------------------------------


def staff_client(*perms: str, merchant: Merchant) -> Client:
    """A staff user of the order's merchant (the admin shows staff only their merchants' orders)."""
    user = User.objects.create_user("olga", "olga@example.com", "pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=perms))
    merchant.staff.add(user)
    client = Client()
    client.force_login(user)
    return client


def made_at_the_fake(order: Order, fake_server: Any, settings: Any) -> None:
    paid_at_the_fake(order, fake_server, settings)
    services.order_mark_make_pending(order_id=order.pk)
    services.order_mark_successful(order_id=order.pk)


def test_staff_with_the_permission_refund_from_the_orders_page(order: Order, fake_server: Any, settings: Any) -> None:
    made_at_the_fake(order, fake_server, settings)
    staff = staff_client("view_order", "refund_order", merchant=order.merchant)
    page = staff.get(f"/admin/payments/order/{order.pk}/change/").content.decode()
    assert f'href="/admin/payments/order/{order.pk}/refund/"' in page
    form = staff.get(f"/admin/payments/order/{order.pk}/refund/")
    key = form.context["form"]["key"].value()
    assert form.status_code == 200 and 'value="159.00"' in form.content.decode()
    data = {"key": key, "amount": "50.00", "reason": "one drink of two"}
    done = staff.post(f"/admin/payments/order/{order.pk}/refund/", data, follow=True)
    assert "50.00\xa0₽ of order" in done.content.decode() and "refunded." in done.content.decode()
    staff.post(f"/admin/payments/order/{order.pk}/refund/", data)  # the same form again
    [record] = StaffRefund.objects.all()
    assert (record.pk, record.amount_kopecks, record.username, len(fake_server.app.refunds)) == (
        uuid.UUID(key), 5000, "olga", 1)
    event = OrderEvent.objects.filter(operation="staff_refund").get()
    assert (event.cause, event.reference, event.user_id, event.detail) == ("staff", "olga", record.user_id,
                                                                          "one drink of two")
    shown = staff.get(f"/admin/payments/order/{order.pk}/change/").content.decode()
    assert "Refunds by staff" in shown and "one drink of two" in shown
    russian = staff.get(f"/admin/payments/order/{order.pk}/refund/", HTTP_ACCEPT_LANGUAGE="ru").content.decode()
    assert "Сумма возврата" in russian and "109,00" in russian
    too_much = staff.post(f"/admin/payments/order/{order.pk}/refund/", {**data, "key": str(uuid.uuid4()),
                                                                        "amount": "200"})
    assert "cannot be refunded, 109.00\xa0₽ is left" in too_much.content.decode() and StaffRefund.objects.count() == 1


def test_staff_without_the_permission_cannot_refund(order: Order, fake_server: Any, settings: Any) -> None:
    made_at_the_fake(order, fake_server, settings)
    staff = staff_client("view_order", "change_order", merchant=order.merchant)
    assert "/refund/" not in staff.get(f"/admin/payments/order/{order.pk}/change/").content.decode()
    assert staff.get(f"/admin/payments/order/{order.pk}/refund/").status_code == 403
    posted = staff.post(f"/admin/payments/order/{order.pk}/refund/", {"key": str(uuid.uuid4()), "amount": "1",
                                                                       "reason": "x"})
    assert posted.status_code == 403 and not StaffRefund.objects.exists() and not fake_server.app.refunds


def test_an_order_not_refundable_has_no_refund_button(admin_client: Any, order: Order) -> None:
    assert "/refund/" not in admin_client.get(f"/admin/payments/order/{order.pk}/change/").content.decode()
    refused = admin_client.post(f"/admin/payments/order/{order.pk}/refund/",
                                {"key": str(uuid.uuid4()), "amount": "1", "reason": "x"})
    assert "staff refund only an order whose money was taken and kept" in refused.content.decode()
