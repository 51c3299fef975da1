"""The HTTP surface in-process (Django's AsyncClient through the ASGI handler) with the fake provider."""

from __future__ import annotations

import datetime
import json
import asyncio
import logging
import re
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import sync_to_async
from django.http import HttpResponse
from django.test import AsyncClient, AsyncRequestFactory
from django.utils import timezone

from devtools.fake_provider import FakeProvider
from payments import provider, services, views
from payments.models import Device, Merchant, Order
from tests.payments.conftest import scan_parameters

# Views run the ORM in their own threads: those must see the tests' rows, so no wrapping transaction.
pytestmark = pytest.mark.django_db(transaction=True)

ORDER_ID = scan_parameters()["order_id"]
QR = {"deviceUuid": "machine-1", "orderId": ORDER_ID, "drinkNo": "2", "size": "2"}


def qr_url(**changes: str) -> str:
    return "/v1/pay?" + urlencode({**QR, **changes})


def assert_error_page(response: HttpResponse, status: int, *texts: str) -> None:
    content = response.content.decode()
    assert response.status_code == status, content
    assert response["Content-Type"].startswith("text/html")
    for text in texts:
        assert text in content
    assert "Traceback" not in content and "Exception" not in content


async def order_row(order_id: str = ORDER_ID) -> Order:
    return await Order.objects.aget(pk=order_id)


# GET /v1/pay ---------------------------------------------------------------------------------


async def test_scan_creates_the_order_and_shows_it(device: Device) -> None:
    response = await AsyncClient().get(qr_url())
    content = response.content.decode()
    assert response.status_code == 200
    assert "Cappuccino" in content and "159.00" in content and "Medium" in content
    assert f'action="/v1/orders/{ORDER_ID}/payment"' in content
    assert (await order_row()).status == "created"


async def test_the_same_qr_scanned_twice_shows_the_same_order(device: Device) -> None:
    client = AsyncClient()
    first, second = await client.get(qr_url()), await client.get(qr_url())
    assert first.status_code == second.status_code == 200
    assert await Order.objects.acount() == 1


async def test_conflicting_reuse_of_an_order_id_is_refused(device: Device) -> None:
    await AsyncClient().get(qr_url())
    response = await AsyncClient().get(qr_url(size="3"))
    assert_error_page(response, 409, "This order cannot be used", "already exists for another drink")
    assert (await order_row()).price_kopecks == 15900


async def test_an_older_link_with_the_menus_price_scans_and_its_drink_name_is_not_shown(device: Device) -> None:
    response = await AsyncClient().get(qr_url(price="15900", drinkName="Free coffee"))
    content = response.content.decode()
    assert response.status_code == 200 and "159.00" in content and "Cappuccino" in content
    assert "Free coffee" not in content


@pytest.mark.parametrize(
    ("changes", "status", "texts"),
    [
        ({"price": "1"}, 409, ["price is not the machine", "says 0.01\xa0₽, but Cappuccino (medium) costs 159.00\xa0₽"]),
        ({"drinkNo": "7"}, 404, ["not on the machine", "no drink 7 in size medium"]),
        ({"drinkNo": "3", "size": "3"}, 409, ["This drink is not available", "Latte (large) is not available"]),
    ],
)
async def test_a_link_the_menu_does_not_back_gets_a_page_and_writes_nothing(
    device: Device, changes: dict[str, str], status: int, texts: list[str]
) -> None:
    assert_error_page(await AsyncClient().get(qr_url(**changes)), status, *texts)
    assert not await Order.objects.aexists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"size": "4"}, "size (size=&#x27;4&#x27;) is not one of 1 (small), 2 (medium), 3 (large)."),
        ({"drinkNo": ""}, "This QR code has no drink number (drinkNo)."),
        ({"price": "1.00"}, "price (price=&#x27;1.00&#x27;) is not a whole number"),
        ({"orderId": "a b"}, "order number (orderId=&#x27;a b&#x27;) is not 1-64 letters"),
    ],
)
async def test_bad_parameters_get_a_400_page_naming_them(device: Device, changes: dict[str, str], message: str) -> None:
    assert_error_page(await AsyncClient().get(qr_url(**changes)), 400, "This QR code is not valid", message)
    assert not await Order.objects.aexists()


async def test_unknown_device_is_404(device: Device) -> None:
    assert_error_page(await AsyncClient().get(qr_url(deviceUuid="machine-9")), 404, "Unknown coffee machine")


async def test_inactive_merchant_is_403(device: Device) -> None:
    await Merchant.objects.aupdate(active_until=timezone.localdate() - datetime.timedelta(days=1))
    assert_error_page(await AsyncClient().get(qr_url()), 403, "does not take payments")


async def test_offline_device_is_409(device: Device) -> None:
    await Device.objects.aupdate(status="offline")
    assert_error_page(await AsyncClient().get(qr_url()), 409, "This coffee machine is offline")


async def test_expired_order_is_410(device: Device, settings: Any) -> None:
    long_ago = timezone.now() - datetime.timedelta(minutes=settings.ORDER_EXPIRY_MINUTES + 1)
    await sync_to_async(services.order_create)(**scan_parameters(), now=long_ago)
    assert_error_page(await AsyncClient().get(qr_url()), 410, "This order has expired")


async def test_scan_only_answers_get(device: Device) -> None:
    assert (await AsyncClient().post(qr_url())).status_code == 405


# POST /v1/orders/<id>/payment ----------------------------------------------------------------


async def start_payment(client: AsyncClient | None = None, order_id: str = ORDER_ID) -> HttpResponse:
    return await (client or AsyncClient()).post(f"/v1/orders/{order_id}/payment")


async def test_payment_redirects_to_the_provider_and_marks_the_order_pending(fake: FakeProvider, order: Order) -> None:
    response = await start_payment()
    assert response.status_code == 303
    payment = next(iter(fake.payments.values()))
    assert response["Location"] == payment.confirmation_url
    assert payment.return_url == f"http://testserver/v1/orders/{ORDER_ID}"
    stored = await order_row()
    assert (stored.status, stored.provider_payment_id) == ("pending", payment.id)


async def test_retrying_the_payment_never_charges_twice(fake: FakeProvider, order: Order) -> None:
    """Idempotent payment creation: every attempt for the order uses the same Idempotence-Key."""
    first, second = await start_payment(), await start_payment()
    assert first["Location"] == second["Location"]
    assert len(fake.payments) == 1 and fake.calls["POST /payments"] == 2


async def test_the_payment_is_the_same_whatever_host_or_scheme_the_customer_used(fake: FakeProvider, order: Order) -> None:
    """The body sent under the order's Idempotence-Key never depends on the request: no 502 for a
    second attempt through another host name or with a forged X-Forwarded-Proto."""
    # The view itself, with the request's META as a proxy would pass it on: the test client always
    # sends Host: testserver.
    attempts = [{"HTTP_HOST": "localhost", "HTTP_X_FORWARDED_PROTO": "https"}, {"HTTP_HOST": "127.0.0.1"},
                {"HTTP_HOST": "localhost"}]
    locations = []
    for meta in attempts:
        request = AsyncRequestFactory().post(f"/v1/orders/{ORDER_ID}/payment")
        request.META.update(meta)
        response = await views.payment_start(request, ORDER_ID)
        assert response.status_code == 303, response.content
        locations.append(response["Location"])
    payment = next(iter(fake.payments.values()))
    assert len(fake.payments) == 1 and fake.calls["POST /payments"] == 3
    assert locations == [payment.confirmation_url] * 3
    assert payment.return_url == f"http://testserver/v1/orders/{ORDER_ID}"


async def test_payment_form_works_with_csrf_checks(fake: FakeProvider, device: Device) -> None:
    client = AsyncClient(enforce_csrf_checks=True)
    page = (await client.get(qr_url())).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None
    assert (await client.post(f"/v1/orders/{ORDER_ID}/payment")).status_code == 403
    response = await client.post(f"/v1/orders/{ORDER_ID}/payment", {"csrfmiddlewaretoken": token.group(1)})
    assert response.status_code == 303


@pytest.mark.parametrize("mode", ["error", "hang"])
async def test_provider_failure_shows_a_clear_page_and_the_order_stays_payable(
    fake: FakeProvider, order: Order, settings: Any, mode: str
) -> None:
    """Provider 5xx and timeouts: a 503 page with a way back; the order can still be paid."""
    settings.PAYMENT_PROVIDER_READ_TIMEOUT = 0.2
    fake.fail = mode
    response = await start_payment()
    assert_error_page(response, 503, "The payment service did not answer", f'href="/v1/orders/{ORDER_ID}"')
    assert (await order_row()).status == "created"
    fake.fail = "none"
    assert (await start_payment()).status_code == 303


async def test_shop_without_secret_shows_a_page_and_logs_an_error(
    fake: FakeProvider, order: Order, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.PAYMENT_PROVIDER_SECRETS = {}
    with caplog.at_level(logging.ERROR, logger="payments.provider"):
        response = await start_payment()
    assert_error_page(response, 503, "Payments for this coffee machine are not set up yet")
    assert "no secret key for shop 'demo-shop'" in caplog.text
    assert (await order_row()).status == "created"


async def test_payment_for_an_unknown_order_is_404(fake: FakeProvider) -> None:
    response = await start_payment(order_id="nope")
    assert_error_page(response, 404, "Unknown order")
    assert "Back to your order" not in response.content.decode()


async def test_payment_for_an_expired_order_is_410(fake: FakeProvider, device: Device, settings: Any) -> None:
    long_ago = timezone.now() - datetime.timedelta(minutes=settings.ORDER_EXPIRY_MINUTES + 1)
    await sync_to_async(services.order_create)(**scan_parameters(), now=long_ago)
    assert_error_page(await start_payment(), 410, "This order has expired")
    assert fake.calls["POST /payments"] == 0


async def test_payment_for_a_paid_order_goes_to_the_status_page(fake: FakeProvider, order: Order) -> None:
    await start_payment()
    await sync_to_async(services.order_mark_paid)(order_id=ORDER_ID)
    response = await start_payment()
    assert (response.status_code, response["Location"]) == (303, f"http://testserver/v1/orders/{ORDER_ID}")


# POST /v1/payments/webhook -------------------------------------------------------------------


async def notify(body: Any, *, raw: bytes | None = None) -> HttpResponse:
    data = raw if raw is not None else json.dumps(body).encode()
    # CSRF checks on: the provider has no token, the webhook must not need one.
    return await AsyncClient(enforce_csrf_checks=True).post(
        "/v1/payments/webhook", data=data, content_type="application/json"
    )


async def paid_at_provider(fake: FakeProvider) -> dict[str, Any]:
    """Start the order's payment and have the customer pay it; the provider's notification."""
    await start_payment()
    return fake.settle(next(iter(fake.payments)), "succeeded")


async def test_webhook_marks_the_order_paid_and_is_idempotent(fake: FakeProvider, order: Order) -> None:
    """Webhook idempotency: the same notification again changes nothing."""
    notification = await paid_at_provider(fake)
    first = await notify(notification)
    assert (first.status_code, first.json()) == (200, {"status": "paid"})
    updated = (await order_row()).updated_at
    again = await notify(notification)
    assert (again.status_code, again.json()["status"]) == (200, "unchanged: order is paid, payment is succeeded")
    assert (await order_row()).updated_at == updated


async def test_webhook_body_is_never_trusted(fake: FakeProvider, order: Order) -> None:
    await start_payment()
    payment = next(iter(fake.payments.values()))
    forged = {"type": "notification", "event": "payment.succeeded", "object": {**payment.as_json(), "status": "succeeded"}}
    assert (await notify(forged)).status_code == 200
    assert (await order_row()).status == "pending"


async def test_out_of_order_notifications_are_harmless(fake: FakeProvider, order: Order) -> None:
    """A stale canceled event arriving after the success leaves the order paid."""
    succeeded = await paid_at_provider(fake)
    stale = {**succeeded, "event": "payment.canceled", "object": {**succeeded["object"], "status": "canceled"}}
    await notify(succeeded)
    assert (await notify(stale)).status_code == 200
    assert (await order_row()).status == "paid"


async def test_notification_before_the_payment_id_is_stored(fake: FakeProvider, order: Order) -> None:
    """Out of order: the provider notifies before our own request stored the payment id."""
    payment = await provider.payment_create(shop_id="demo-shop", order_id=ORDER_ID, amount_kopecks=15900,
                                            description="Cappuccino", return_url="http://testserver/x")
    notification = fake.settle(payment.id, "succeeded")
    assert (await notify(notification)).json() == {"status": "paid"}
    assert (await order_row()).provider_payment_id == payment.id


async def test_canceled_payment_marks_the_order_not_paid(fake: FakeProvider, order: Order) -> None:
    await start_payment()
    notification = fake.settle(next(iter(fake.payments)), "canceled")
    assert (await notify(notification)).json() == {"status": "not_paid"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not JSON"),
        (b'{"type": "x"}', '"type": "notification"'),
        (b'{"type": "notification", "event": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"type": "notification", "type": "notification"}', "key 'type' is given 2 times"),
    ],
)
async def test_malformed_webhook_is_400(raw: bytes, message: str) -> None:
    response = await notify(None, raw=raw)
    assert response.status_code == 400 and message in response.json()["error"]


async def test_webhook_when_the_provider_is_down_asks_for_a_retry(fake: FakeProvider, order: Order) -> None:
    notification = await paid_at_provider(fake)
    fake.fail = "error"
    assert (await notify(notification)).status_code == 503
    assert fake.calls[f"GET /payments/{notification['object']['id']}"] == 1  # no retries of our own
    assert (await order_row()).status == "pending"
    fake.fail = "none"
    assert (await notify(notification)).json() == {"status": "paid"}


async def test_webhook_for_an_unknown_payment_is_acknowledged(fake: FakeProvider) -> None:
    body = {"type": "notification", "event": "payment.succeeded", "object": {"id": "nope"}}
    assert (await notify(body)).json() == {"status": "ignored: no order for this payment"}


# GET /v1/order-status/<id> and /v1/orders/<id> ------------------------------------------------


async def test_order_status_json(order: Order) -> None:
    response = await AsyncClient().get(f"/v1/order-status/{ORDER_ID}")
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    assert response.json() == {"order_id": ORDER_ID, "status": "created", "label": "Waiting for payment",
                               "final": False, "expired": False, "drink_number": 2, "drink_name": "Cappuccino",
                               "size": 2, "size_label": "Medium", "amount_kopecks": 15900, "amount": "159.00",
                               "currency": "RUB"}


async def test_order_status_of_an_unknown_order_is_a_json_404() -> None:
    response = await AsyncClient().get("/v1/order-status/nope")
    assert (response.status_code, response.json()) == (404, {"error": "no order 'nope'"})


async def test_status_page_polls_the_status(order: Order) -> None:
    response = await AsyncClient().get(f"/v1/orders/{ORDER_ID}")
    content = response.content.decode()
    assert response.status_code == 200
    assert f'"/v1/order-status/{ORDER_ID}"' in content and 'data-status="created"' in content


# A pending order's poll and return page re-read the payment: confirmation without the notification


async def paid_without_notification(fake: FakeProvider) -> str:
    """The customer paid at the provider; no notification reaches this server. The payment's id."""
    await start_payment()
    payment_id = next(iter(fake.payments))
    fake.settle(payment_id, "succeeded")  # the notification it returns is never posted
    return payment_id


async def poll() -> dict[str, Any]:
    return (await AsyncClient().get(f"/v1/order-status/{ORDER_ID}")).json()


async def test_a_pending_orders_poll_reads_its_payment_and_applies_it(fake: FakeProvider, order: Order) -> None:
    payment_id = await paid_without_notification(fake)
    assert (await poll())["status"] == "paid"
    assert fake.calls[f"GET /payments/{payment_id}"] == 1
    assert (await poll())["status"] == "paid"  # paid: no provider read any more
    assert fake.calls[f"GET /payments/{payment_id}"] == 1


async def test_one_provider_read_per_order_per_interval_whoever_polls(
    fake: FakeProvider, order: Order, settings: Any
) -> None:
    """The claim is a compare-and-set on the order row: concurrent polls (any worker, any pod) of
    a payment still pending at the provider make one read per ORDER_PROVIDER_RECHECK_SECONDS."""
    await start_payment()
    payment_id = next(iter(fake.payments))
    fake.latency = 0.2
    answers = await asyncio.gather(*(poll() for _ in range(5)))
    assert [answer["status"] for answer in answers] == ["pending"] * 5
    assert fake.calls[f"GET /payments/{payment_id}"] == 1
    checked = (await order_row()).provider_checked_at
    assert checked is not None
    # The interval passes (the claim's time moved back by it): the next poll reads again.
    await Order.objects.filter(pk=ORDER_ID).aupdate(
        provider_checked_at=checked - datetime.timedelta(seconds=settings.ORDER_PROVIDER_RECHECK_SECONDS))
    fake.settle(payment_id, "succeeded")
    assert (await poll())["status"] == "paid" and fake.calls[f"GET /payments/{payment_id}"] == 2
    assert (await order_row()).updated_at >= checked  # the payment's change, not the claim's


async def test_the_poll_waits_for_the_provider_at_most_its_budget(fake: FakeProvider, order: Order, settings: Any) -> None:
    settings.ORDER_STATUS_PROVIDER_BUDGET_SECONDS = 0.3
    await paid_without_notification(fake)
    fake.latency = 3.0
    started = time.monotonic()
    assert (await poll())["status"] == "pending"
    assert time.monotonic() - started < settings.ORDER_STATUS_PROVIDER_BUDGET_SECONDS + 0.5


@pytest.mark.forged_status
async def test_orders_not_waiting_on_the_provider_are_never_read_from_it(fake: FakeProvider, order: Order) -> None:
    assert (await poll())["status"] == "created"
    await paid_without_notification(fake)
    await Order.objects.filter(pk=ORDER_ID).aupdate(status="not_paid")
    assert (await poll())["status"] == "not_paid"
    assert (await AsyncClient().get(f"/v1/orders/{ORDER_ID}")).status_code == 200
    assert not [call for call in fake.calls if call.startswith("GET")]


async def test_back_from_the_provider_the_page_shows_paid_and_what_happens_next(fake: FakeProvider, order: Order) -> None:
    await paid_without_notification(fake)
    response = await AsyncClient().get(f"/v1/orders/{ORDER_ID}")  # the provider's return URL
    content = response.content.decode()
    assert 'data-status="paid"' in content and re.search(r'<form [^>]*id="pay" hidden>', content)
    shown = re.findall(r'<p data-statuses="[^"]*">\s*([^<]+)', content)
    assert [text.strip() for text in shown] == [
        "Paid: the coffee machine is making your drink. Take it from the machine when it is ready."]


async def test_a_provider_that_fails_leaves_the_poll_answering(fake: FakeProvider, order: Order) -> None:
    await paid_without_notification(fake)
    fake.fail = "error"
    assert (await poll())["status"] == "pending"
    await Order.objects.filter(pk=ORDER_ID).aupdate(provider_checked_at=None)
    fake.fail = "none"
    assert (await poll())["status"] == "paid"


async def test_status_page_of_an_unknown_order_is_404() -> None:
    assert_error_page(await AsyncClient().get("/v1/orders/nope"), 404, "Unknown order")
