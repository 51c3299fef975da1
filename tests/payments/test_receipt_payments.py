"""Receipts, the customer's contact and SBP through the customer's pages, the services and the fake
provider: what a payment carries, what is remembered, where the contact may and may not appear."""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import AsyncClient, Client
from django.utils import timezone

from devtools.fake_provider import FakeProvider
from payments import reconciliation, services
from payments.models import Device, MenuItem, Merchant, Order
from payments.provider import Notification
from tests.payments.conftest import scan_parameters

pytestmark = pytest.mark.django_db(transaction=True)

ORDER_ID = scan_parameters()["order_id"]
QR = f"/v1/pay?deviceUuid=machine-1&orderId={ORDER_ID}&drinkNo=2&size=2"
PAY = f"/v1/orders/{ORDER_ID}/payment"
EMAIL = "ivan.petrov@example.ru"


@pytest.fixture
async def receipts_on(merchant: Merchant, device: Device) -> Merchant:
    await Merchant.objects.filter(pk=merchant.pk).aupdate(receipts_enabled=True, vat_code=11, tax_system_code=2)
    return await Merchant.objects.aget(pk=merchant.pk)


async def scan() -> str:
    """The customer scans the QR code: the order is created, its page shown."""
    response = await AsyncClient().get(QR)
    assert response.status_code == 200
    return response.content.decode()


def sent_bodies(fake: FakeProvider) -> list[dict[str, Any]]:
    return [json.loads(body) for body, _ in fake.keys.values()]


async def order_row() -> Order:
    return await Order.objects.aget(pk=ORDER_ID)


async def test_without_receipts_the_page_asks_nothing_and_the_payment_is_as_before(fake: FakeProvider, device: Device) -> None:
    page = await scan()
    assert 'name="contact"' not in page
    assert (await AsyncClient().post(PAY)).status_code == 303
    [body] = sent_bodies(fake)
    assert set(body) == {"amount", "capture", "confirmation", "description", "metadata"} and body["capture"] is True


async def test_with_receipts_pay_needs_the_contact_and_the_payment_carries_the_receipt(
    fake: FakeProvider, receipts_on: Merchant
) -> None:
    page = await scan()
    assert 'name="contact"' in page and "E-mail or phone number for your receipt" in page
    missing = await AsyncClient().post(PAY)
    assert missing.status_code == 400 and "Enter an e-mail address or a phone number" in missing.content.decode()
    assert 'name="contact"' in missing.content.decode() and not fake.payments
    response = await AsyncClient().post(PAY, {"contact": EMAIL})
    assert response.status_code == 303
    [body] = sent_bodies(fake)
    assert body["receipt"] == {"customer": {"email": EMAIL}, **(await order_row()).receipt}
    assert body["receipt"]["tax_system_code"] == 2 and body["receipt"]["items"][0]["vat_code"] == 11
    stored = await order_row()
    assert (stored.status, stored.customer_contact, stored.receipt_registration) == ("pending", EMAIL, "")


async def test_a_bad_contact_gets_the_order_page_again_in_the_customers_language_without_it(
    fake: FakeProvider, receipts_on: Merchant
) -> None:
    await scan()
    typed = "+7 000 000-00-00"
    response = await AsyncClient().post(PAY, {"contact": typed}, headers={"Accept-Language": "ru"})
    content = response.content.decode()
    assert response.status_code == 400 and "Это не номер телефона" in content and 'aria-invalid="true"' in content
    assert typed not in content and "000-00-00" not in content
    assert not fake.payments and (await order_row()).customer_contact == ""


async def test_the_first_contact_stays_and_every_attempt_sends_the_same_body(fake: FakeProvider, receipts_on: Merchant) -> None:
    await scan()
    assert (await AsyncClient().post(PAY, {"contact": "8 900 123-45-67"})).status_code == 303
    # The menu and the merchant change meanwhile; the order pays as it was scanned.
    await MenuItem.objects.filter(drink_number=2, size=2).aupdate(vat_code=1, price_kopecks=1)
    await Merchant.objects.aupdate(tax_system_code=None, receipts_enabled=False)
    again = await AsyncClient().post(PAY, {"contact": "other@example.ru"})
    # The fake answers a key's second request only if its body is the first one's (else a 400).
    assert again.status_code == 303 and len(fake.payments) == 1 and fake.calls["POST /payments"] == 2
    [body] = sent_bodies(fake)
    assert body["receipt"]["customer"] == {"phone": "79001234567"}
    assert body["receipt"]["items"][0]["vat_code"] == 11 and body["amount"]["value"] == "159.00"
    page = (await AsyncClient().get(QR)).content.decode()
    assert "+7********67" in page and "79001234567" not in page


async def test_the_receipts_registration_and_the_method_are_recorded_and_reconciled(
    fake: FakeProvider, receipts_on: Merchant, settings: Any
) -> None:
    await scan()
    fake.receipt_seconds = 3600  # not registered yet when the notification is applied
    await AsyncClient().post(PAY, {"contact": EMAIL})
    payment_id = next(iter(fake.payments))
    notification = fake.settle(payment_id, "succeeded")
    told = Notification(event=notification["event"], payment_id=payment_id, order_id_hint=ORDER_ID)
    assert await services.payment_notification_apply(notification=told) == "paid"
    stored = await order_row()
    assert (stored.status, stored.payment_method, stored.receipt_registration) == ("paid", "bank_card", "pending")

    fake.receipt_seconds = 0
    later = timezone.now() + datetime.timedelta(minutes=settings.ORDER_RECONCILE_AFTER_MINUTES + 1)
    assert await reconciliation.orders_reconcile(now=later) == {"receipt succeeded": 1}
    assert (await order_row()).receipt_registration == "succeeded"
    assert await reconciliation.orders_reconcile(now=later + datetime.timedelta(hours=1)) == {}


async def test_a_receipt_the_provider_could_not_register_is_an_error_for_the_staff(
    fake: FakeProvider, receipts_on: Merchant, caplog: pytest.LogCaptureFixture
) -> None:
    await scan()
    await AsyncClient().post(PAY, {"contact": EMAIL})
    payment_id = next(iter(fake.payments))
    fake.settle(payment_id, "succeeded")
    fake.payments[payment_id].receipt_status = "canceled"
    told = Notification(event="payment.succeeded", payment_id=payment_id, order_id_hint=ORDER_ID)
    with caplog.at_level(logging.ERROR, logger="payments.services"):
        await services.payment_notification_apply(notification=told)
        await services.payment_notification_apply(notification=told)
    assert (await order_row()).receipt_registration == "canceled"
    assert caplog.text.count("could not register the payment's receipt") == 1


async def test_the_contact_is_in_no_log_line(fake: FakeProvider, receipts_on: Merchant, caplog: pytest.LogCaptureFixture,
                                             settings: Any) -> None:
    """Pay, fail the drink (the full refund carries no receipt), reconcile: every log line at every level."""
    await scan()
    with caplog.at_level(logging.DEBUG):
        await AsyncClient().post(PAY, {"contact": EMAIL})
        await AsyncClient().post(PAY, {"contact": "not-an-address@"})
        payment_id = next(iter(fake.payments))
        fake.settle(payment_id, "succeeded")
        told = Notification(event="payment.succeeded", payment_id=payment_id, order_id_hint=ORDER_ID)
        await services.payment_notification_apply(notification=told)
        failed = await services.order_mark_make_failed_and_return_money(order_id=ORDER_ID)
        later = timezone.now() + datetime.timedelta(minutes=settings.ORDER_RECONCILE_AFTER_MINUTES + 1)
        await reconciliation.orders_reconcile(now=later)
    assert failed.status == "refunded" and "receipt" not in sent_bodies(fake)[-1]
    assert caplog.records and not [r.getMessage() for r in caplog.records if "ivan" in r.getMessage()]
    assert "not-an-address" not in caplog.text


def test_the_admin_list_masks_the_contact_and_the_orders_page_shows_it(receipts_on: Merchant) -> None:
    services.order_create(**scan_parameters())
    Order.objects.filter(pk=ORDER_ID).update(customer_contact=EMAIL, receipt_registration="succeeded",
                                             payment_method="sbp")
    client = Client()
    client.force_login(User.objects.create_superuser("staff", "staff@example.com", "pw"))
    listing = client.get("/admin/payments/order/").content.decode()
    assert "i***@e***.ru" in listing and EMAIL not in listing and "succeeded" in listing and "sbp" in listing
    assert EMAIL in client.get(f"/admin/payments/order/{ORDER_ID}/change/").content.decode()


async def test_contacts_are_erased_after_their_retention_and_the_order_stays(
    fake: FakeProvider, receipts_on: Merchant, settings: Any
) -> None:
    await scan()
    settings.ORDER_CONTACT_RETENTION_DAYS = 30
    await AsyncClient().post(PAY, {"contact": EMAIL})
    await sync_to_async(services.order_mark_paid)(order_id=ORDER_ID)
    before = await order_row()
    assert await reconciliation.orders_reconcile(now=timezone.now() + datetime.timedelta(days=29)) == {}
    assert (await order_row()).customer_contact == EMAIL
    outcomes = await reconciliation.orders_reconcile(now=timezone.now() + datetime.timedelta(days=30, minutes=1))
    assert outcomes["contacts erased"] == 1
    after = await order_row()
    assert (after.customer_contact, after.status, after.updated_at, after.receipt) == (
        "", "paid", before.updated_at, before.receipt)


# SBP ----------------------------------------------------------------------------------------------


async def test_an_sbp_merchants_payment_is_single_stage_whatever_its_switch(fake: FakeProvider, device: Device) -> None:
    await Merchant.objects.aupdate(payment_methods="sbp", two_stage_payments=True)
    await scan()
    assert (await AsyncClient().post(PAY)).status_code == 303
    [body] = sent_bodies(fake)
    assert (body["capture"], body["payment_method_data"]) == (True, {"type": "sbp"})
    assert (await order_row()).two_stage is False


async def test_card_only_asks_for_the_card_and_any_method_asks_for_none(fake: FakeProvider, device: Device) -> None:
    await Merchant.objects.aupdate(payment_methods="bank_card", two_stage_payments=True)
    await scan()
    await AsyncClient().post(PAY)
    await Merchant.objects.aupdate(payment_methods="any")
    await sync_to_async(services.order_create)(**scan_parameters(order_id="o-3"))
    await AsyncClient().post("/v1/orders/o-3/payment")
    card, anything = sent_bodies(fake)
    assert (card["capture"], card["payment_method_data"]) == (False, {"type": "bank_card"})
    assert anything["capture"] is False and "payment_method_data" not in anything


async def test_an_sbp_payment_is_recorded_and_its_refund_completes_when_the_bank_confirms(
    fake: FakeProvider, device: Device
) -> None:
    await Merchant.objects.aupdate(payment_methods="sbp")
    await scan()
    fake.sbp_refund_seconds = 3600
    await AsyncClient().post(PAY)
    payment_id = next(iter(fake.payments))
    fake.settle(payment_id, "succeeded")
    told = Notification(event="payment.succeeded", payment_id=payment_id, order_id_hint=ORDER_ID)
    assert await services.payment_notification_apply(notification=told) == "paid"
    assert (await order_row()).payment_method == "sbp"

    waiting = await services.order_mark_make_failed_and_return_money(order_id=ORDER_ID)
    [refund] = fake.refunds.values()
    assert (waiting.status, waiting.refund_status, refund.status) == ("refund_pending", "pending", "pending")
    fake.sbp_refund_seconds = 0
    notification = Notification(event="refund.succeeded", payment_id=payment_id, order_id_hint=None, refund_id=refund.id)
    assert await services.payment_notification_apply(notification=notification) == "refunded"
    assert (await order_row()).refunded_kopecks == 15900


async def test_an_error_report_of_the_payment_request_hides_the_contact(fake: FakeProvider, receipts_on: Merchant) -> None:
    from django.test import AsyncRequestFactory
    from django.views.debug import SafeExceptionReporterFilter

    from payments import views

    await scan()
    request = AsyncRequestFactory().post(PAY, {"contact": EMAIL})
    assert (await views.payment_start(request, ORDER_ID)).status_code == 303
    reported = SafeExceptionReporterFilter().get_post_parameters(request)
    assert reported["contact"] != EMAIL and set(reported["contact"]) == {"*"}


def test_the_merchant_admin_shows_every_field_and_refuses_receipts_without_a_vat_rate(merchant: Merchant) -> None:
    from payments.admin import MerchantAdmin

    shown = {name for _, options in MerchantAdmin.fieldsets for name in options["fields"]}
    assert shown == {field.name for field in Merchant._meta.fields if field.editable and not field.auto_created}
    client = Client()
    client.force_login(User.objects.create_superuser("staff", "staff@example.com", "pw"))
    page = client.get(f"/admin/payments/merchant/{merchant.pk}/change/").content.decode()
    assert "Receipts (54-FZ)" in page and 'name="vat_code"' in page
    form = {"name": merchant.name, "contact_email": merchant.contact_email, "active_until": merchant.active_until,
            "shop_id": merchant.shop_id, "payment_methods": "sbp", "receipts_enabled": "on",
            "payment_subject": "commodity", "payment_mode": "full_payment", "receipt_by_phone": "on"}
    refused = client.post(f"/admin/payments/merchant/{merchant.pk}/change/", form)
    assert refused.status_code == 200 and "Receipts need a VAT rate" in refused.content.decode()
    saved = client.post(f"/admin/payments/merchant/{merchant.pk}/change/", {**form, "vat_code": "11"})
    assert saved.status_code == 302
    assert Merchant.objects.values_list("receipts_enabled", "vat_code", "payment_methods").get() == (True, 11, "sbp")


async def test_a_refunds_receipt_is_recorded_and_reconciled_too(fake: FakeProvider, receipts_on: Merchant,
                                                               settings: Any) -> None:
    await scan()
    fake.receipt_seconds = 0
    await AsyncClient().post(PAY, {"contact": EMAIL})
    payment_id = next(iter(fake.payments))
    fake.settle(payment_id, "succeeded")
    await services.payment_notification_apply(
        notification=Notification(event="payment.succeeded", payment_id=payment_id, order_id_hint=ORDER_ID))
    fake.receipt_seconds = 3600
    refunded = await services.order_mark_make_failed_and_return_money(order_id=ORDER_ID)
    assert (refunded.status, refunded.receipt_registration, refunded.refund_receipt_registration) == (
        "refunded", "succeeded", "pending")
    fake.receipt_seconds = 0
    later = timezone.now() + datetime.timedelta(minutes=settings.ORDER_RECONCILE_AFTER_MINUTES + 1)
    assert await reconciliation.orders_reconcile(now=later) == {"receipt succeeded": 1}
    assert (await order_row()).refund_receipt_registration == "succeeded"
    # Three days on, a receipt still pending is the provider support's, not a re-read every run.
    await Order.objects.aupdate(refund_receipt_registration="pending", reconciled_at=None)
    assert await reconciliation.orders_reconcile(now=later + datetime.timedelta(days=3)) == {}
