"""The machine API through Django's ASGI handler: token auth, orders, outcome reports, menu upload."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.http import HttpResponse
from django.test import AsyncClient
from django.utils import timezone

from devtools.fake_provider import FakeProvider
from payments import credentials, services
from payments.models import Device, DeviceCredential, MenuItem, Order
from payments.vend_window import make_windows_check
from tests.payments.conftest import MENU, menu_entries, paid_order

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def token(device: Device) -> str:
    return services.device_credential_issue(device_id=device.pk)


class Machine:
    """A client sending the machine's token. CSRF checks on: a machine has no CSRF token, its bearer
    token is what authenticates it. Headers per request: AsyncClient(headers=...) sends them under
    their WSGI names (HTTP_AUTHORIZATION) on ASGI."""

    def __init__(self, authorization: str | None) -> None:
        self.client = AsyncClient(enforce_csrf_checks=True)
        self.headers = {"Authorization": authorization} if authorization else {}

    async def get(self, path: str) -> HttpResponse:
        return await self.client.get(path, headers=self.headers)

    async def post(self, path: str, data: Any = None, **kwargs: Any) -> HttpResponse:
        return await self.client.post(path, data, headers=self.headers, **kwargs)

    async def put(self, path: str, data: Any = b"", **kwargs: Any) -> HttpResponse:
        return await self.client.put(path, data, headers=self.headers, **kwargs)


def machine(token: str) -> Machine:
    return Machine(f"Bearer {token}")


async def report(token: str, order_id: str, outcome: Any) -> HttpResponse:
    body = json.dumps({"outcome": outcome})
    return await machine(token).post(f"/v1/machine/orders/{order_id}/report", body, content_type="application/json")


async def paid(order: Order) -> None:
    await sync_to_async(services.order_mark_pending)(order_id=order.pk, provider_payment_id="pay-1")
    await sync_to_async(services.order_mark_paid)(order_id=order.pk)


# Credentials ----------------------------------------------------------------------------------


def test_a_token_is_256_random_bits_stored_only_as_its_hash(device: Device) -> None:
    token = services.device_credential_issue(device_id=device.pk)
    stored = DeviceCredential.objects.get(device=device)
    key_id, _, secret = token.partition(".")
    assert (stored.key_id, len(secret)) == (key_id, 43)
    assert stored.token_sha256 == credentials.token_sha256(token) and secret not in stored.token_sha256
    assert services.device_credential_issue(device_id=device.pk) != token


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        (None, 'Bearer realm="coffee-machine"'),
        ("Basic bWFjaGluZTpwdw==", 'Bearer realm="coffee-machine"'),
        ("Bearer ", 'Bearer realm="coffee-machine"'),
        ("Bearer not-a-token", 'Bearer realm="coffee-machine", error="invalid_token"'),
        (f"Bearer 0123456789abcdef.{'A' * 43}", 'Bearer realm="coffee-machine", error="invalid_token"'),
    ],
)
async def test_no_or_a_wrong_token_is_401_with_a_challenge(
    order: Order, token: str, authorization: str | None, challenge: str
) -> None:
    for response in (
        await Machine(authorization).get(f"/v1/machine/orders/{order.pk}"),
        await Machine(authorization).put("/v1/machine/menu", b"{}", content_type="application/json"),
    ):
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == challenge
        assert "token" in response.json()["error"]
    assert await MenuItem.objects.acount() == len(MENU)


async def test_a_token_with_a_known_key_id_and_another_secret_is_refused(order: Order, token: str) -> None:
    forged = token.partition(".")[0] + "." + "A" * 43
    assert (await machine(forged).get(f"/v1/machine/orders/{order.pk}")).status_code == 401


async def test_a_new_token_retires_the_old_one(order: Order, token: str) -> None:
    assert (await machine(token).get(f"/v1/machine/orders/{order.pk}")).status_code == 200
    newer = await sync_to_async(services.device_credential_issue)(device_id=order.device_id)
    assert (await machine(token).get(f"/v1/machine/orders/{order.pk}")).status_code == 401
    assert (await machine(newer).get(f"/v1/machine/orders/{order.pk}")).status_code == 200


# Orders ---------------------------------------------------------------------------------------


async def test_the_machine_reads_what_was_paid_for(order: Order, token: str) -> None:
    response = await machine(token).get(f"/v1/machine/orders/{order.pk}")
    assert (response.status_code, response["Cache-Control"]) == (200, "no-store")
    assert response.json()["paid"] is False and response.json()["amount_paid_kopecks"] == 0
    await paid(order)
    shown = (await machine(token).get(f"/v1/machine/orders/{order.pk}")).json()
    assert shown == {
        "order_id": order.pk, "status": "paid", "label": "Paid", "final": False, "expired": False,
        "drink_number": 2, "drink_name": "Cappuccino", "size": 2, "size_label": "Medium",
        "amount_kopecks": 15900, "amount": "159.00", "currency": "RUB", "paid": True, "amount_paid_kopecks": 15900,
        "can_make": True,
    }
    await report(token, order.pk, "make_pending")
    making = (await machine(token).get(f"/v1/machine/orders/{order.pk}")).json()
    assert (making["paid"], making["can_make"]) == (True, False)


async def test_another_machines_order_is_404(order: Order) -> None:
    other = await Device.objects.acreate(device_uuid="machine-2", merchant_id=order.merchant_id, location="Hall")
    other_token = await sync_to_async(services.device_credential_issue)(device_id=other.pk)
    await paid(order)
    response = await machine(other_token).get(f"/v1/machine/orders/{order.pk}")
    assert (response.status_code, response.json()) == (404, {"error": f"no order {order.pk!r} for this machine"})
    assert (await report(other_token, order.pk, "make_pending")).status_code == 404
    assert (await machine(other_token).get("/v1/machine/orders/nope")).status_code == 404
    assert (await Order.objects.aget(pk=order.pk)).status == "paid"


async def test_the_machine_reports_the_drink_made(order: Order, token: str) -> None:
    await paid(order)
    making = await report(token, order.pk, "make_pending")
    assert (making.status_code, making.json()["status"]) == (200, "make_pending")
    done = await report(token, order.pk, "successful")
    assert (done.status_code, done.json()["status"], done.json()["final"]) == (200, "successful", True)


async def test_a_repeated_report_is_harmless(fake: FakeProvider, order: Order, token: str) -> None:
    await paid_order(fake, order, two_stage=False)
    await report(token, order.pk, "make_pending")
    updated = (await Order.objects.aget(pk=order.pk)).updated_at
    again = await report(token, order.pk, "make_pending")
    assert (again.status_code, again.json()["status"]) == (200, "make_pending")
    assert (await Order.objects.aget(pk=order.pk)).updated_at == updated
    # The failure refunds at once; the same report again finds the order refunded: harmless.
    failed = await report(token, order.pk, "make_failed")
    assert (failed.status_code, failed.json()["status"], failed.json()["paid"]) == (200, "refunded", False)
    repeated = await report(token, order.pk, "make_failed")
    assert (repeated.status_code, repeated.json()["status"]) == (200, "refunded")
    assert len(fake.refunds) == 1


async def test_a_held_order_is_captured_when_the_machine_reports_it_made(
    fake: FakeProvider, order: Order, token: str
) -> None:
    payment_id = await paid_order(fake, order, two_stage=True)
    held = (await machine(token).get(f"/v1/machine/orders/{order.pk}")).json()
    assert (held["status"], held["paid"], held["can_make"]) == ("held", True, True)
    await report(token, order.pk, "make_pending")
    assert fake.payments[payment_id].status == "waiting_for_capture"
    made = await report(token, order.pk, "successful")
    assert (made.status_code, made.json()["status"]) == (200, "successful")
    assert fake.payments[payment_id].status == "succeeded"
    assert (await report(token, order.pk, "successful")).status_code == 200


async def test_an_illegal_report_is_409_naming_it(order: Order, token: str) -> None:
    response = await report(token, order.pk, "successful")
    assert response.status_code == 409
    assert response.json() == {"error": f"order {order.pk!r} is created and cannot become successful",
                               "reason": "illegal_transition", "status": "created", "outcome": "successful"}
    assert (await Order.objects.aget(pk=order.pk)).status == "created"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "the body is not JSON"),
        (b"\xff", "the body is not JSON"),
        (b'["successful"]', 'the body is not {"outcome": "..."}'),
        (b'{"outcome": "successful", "status": "paid"}', 'the body is not {"outcome": "..."}'),
        (b'{"outcome": "paid"}', "outcome='paid' is not one of make_pending, successful, make_failed"),
        (b'{"outcome": 1}', "outcome='1' is not one of make_pending, successful, make_failed"),
        (b'{"outcome": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "the body is nested too deeply"),
        (b'{"outcome": "successful", "outcome": "make_failed"}', "the body: key 'outcome' is given 2 times (allowed: once)"),
    ],
)
async def test_a_malformed_report_is_400(order: Order, token: str, body: bytes, message: str) -> None:
    response = await machine(token).post(f"/v1/machine/orders/{order.pk}/report", body,
                                         content_type="application/json")
    assert (response.status_code, response.json()) == (400, {"error": message})


async def test_wrong_methods_are_405_in_json(order: Order, token: str) -> None:
    for response, allowed in [
        (await machine(token).post(f"/v1/machine/orders/{order.pk}"), "GET"),
        (await machine(token).get(f"/v1/machine/orders/{order.pk}/report"), "POST"),
        (await machine(token).post("/v1/machine/menu"), "GET, PUT"),
        (await Machine(None).client.delete("/v1/machine/menu"), "GET, PUT"),
    ]:
        assert (response.status_code, response["Allow"]) == (405, allowed)
        assert response.json()["error"].endswith(f"is not allowed (allowed: {allowed})")


# Menu -----------------------------------------------------------------------------------------

ITEM = {"drink_number": 4, "size": 1, "drink_name": "Mocha", "price_kopecks": 17900, "available": True}
# As stored: the receipt line's fields the upload left out are the merchant's (null).
MERCHANTS_RECEIPT_LINE = {"vat_code": None, "payment_subject": None, "payment_mode": None}


async def put_menu(token: str, body: Any) -> HttpResponse:
    data = body if isinstance(body, bytes) else json.dumps(body)
    return await machine(token).put("/v1/machine/menu", data, content_type="application/json")


async def test_the_machine_uploads_its_whole_menu_and_scans_follow_it(device: Device, token: str) -> None:
    response = await put_menu(token, {"items": [ITEM, {**ITEM, "size": 2, "price_kopecks": 19900}]})
    assert response.status_code == 200
    assert response.json() == {"items": [{**ITEM, **MERCHANTS_RECEIPT_LINE},
                                         {**ITEM, **MERCHANTS_RECEIPT_LINE, "size": 2, "price_kopecks": 19900}]}
    assert (await machine(token).get("/v1/machine/menu")).json() == response.json()
    page = await AsyncClient().get("/v1/pay?deviceUuid=machine-1&orderId=o-mocha&drinkNo=4&size=2")
    assert page.status_code == 200 and "199.00" in page.content.decode()
    gone = await AsyncClient().get("/v1/pay?deviceUuid=machine-1&orderId=o-cappuccino&drinkNo=2&size=2")
    assert gone.status_code == 404


async def test_one_machines_menu_upload_leaves_the_others_alone(device: Device, token: str) -> None:
    other = await Device.objects.acreate(device_uuid="machine-2", merchant_id=device.merchant_id, location="Hall")
    await sync_to_async(services.device_menu_replace)(device_id=other.pk, entries=menu_entries())
    await put_menu(token, {"items": [ITEM]})
    assert await MenuItem.objects.filter(device=other).acount() == len(MENU)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[", "the body is not JSON"),
        (b'{"items": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "the body is nested too deeply"),
        (b'{"items": [{"drink_number": 4, "drink_number": 5}]}', "the body: key 'drink_number' is given 2 times"),
        ({"menu": []}, 'the body is not {"items": [...]}'),
        ({"items": [ITEM, "x"]}, "items[1] is not an object"),
        ({"items": [{**ITEM, "price": 1}]}, "items[0] has unknown field 'price'"),
        ({"items": [{k: v for k, v in ITEM.items() if k != "available"}]}, "items[0].available is missing"),
        ({"items": [{**ITEM, "size": 4}]}, "items[0].size=4 is not a whole number in 1..3"),
        ({"items": [{**ITEM, "price_kopecks": 0}]}, "items[0].price_kopecks=0 is not a whole number in 1..1000000"),
        ({"items": [{**ITEM, "price_kopecks": 99.5}]}, "items[0].price_kopecks=99.5 is not a whole number"),
        ({"items": [{**ITEM, "drink_number": True}]}, "items[0].drink_number=True is not a whole number"),
        ({"items": [{**ITEM, "drink_name": " "}]}, "items[0].drink_name is not 1-100 characters"),
        ({"items": [{**ITEM, "drink_name": "Mocha\ud800"}]}, "items[0].drink_name is not 1-100 characters"),
        ({"items": [{**ITEM, "available": "yes"}]}, "items[0].available='yes' is not true or false"),
        ({"items": [ITEM, ITEM]}, "items[1] repeats drink 4 size 1 of items[0]"),
        ({"items": [{**ITEM, "vat_code": 13}]}, "items[0].vat_code=13 is not one of 1..12 (or null: the merchant's)"),
        ({"items": [{**ITEM, "vat_code": "11"}]}, "items[0].vat_code='11' is not one of 1..12"),
        ({"items": [{**ITEM, "vat_code": True}]}, "items[0].vat_code=True is not one of 1..12"),
        ({"items": [{**ITEM, "payment_subject": "coffee"}]}, "items[0].payment_subject='coffee' is not one of commodity,"),
        ({"items": [{**ITEM, "payment_mode": 4}]}, "items[0].payment_mode=4 is not one of full_payment,"),
        ({"items": [ITEM] * 301}, "items has 301 entries (allowed: up to 300)"),
    ],
)
async def test_a_bad_menu_is_400_naming_the_field_and_changes_nothing(
    device: Device, token: str, body: Any, message: str
) -> None:
    response = await put_menu(token, body)
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)
    assert await MenuItem.objects.filter(device=device).acount() == len(MENU)


async def test_an_empty_menu_takes_no_orders(device: Device, token: str) -> None:
    assert (await put_menu(token, {"items": []})).json() == {"items": []}
    page = await AsyncClient().get("/v1/pay?deviceUuid=machine-1&orderId=o-1&drinkNo=2&size=2")
    assert page.status_code == 404 and not await Order.objects.aexists()


async def test_a_machine_that_fails_before_starting_gives_the_money_back(
    fake: FakeProvider, order: Order, token: str
) -> None:
    await paid_order(fake, order, two_stage=False)
    failed = await report(token, order.pk, "make_failed")
    assert (failed.status_code, failed.json()["status"], failed.json()["paid"]) == (200, "refunded", False)
    assert [refund.payment_id for refund in fake.refunds.values()] == [next(iter(fake.payments))]


# Liveness: every call marks the machine seen, polls stay reads ---------------------------------


async def last_seen(device: Device) -> Any:
    return (await Device.objects.aget(pk=device.pk)).last_seen_at


@pytest.mark.parametrize("path", ["/v1/machine/orders/{order}", "/v1/machine/orders/not-yet-scanned", "/v1/machine/menu"])
async def test_every_call_of_a_machine_marks_it_seen(order: Order, token: str, path: str) -> None:
    """Its order, an order not scanned yet (it polls while it shows the QR code), its menu."""
    assert await last_seen(order.device) is None
    response = await machine(token).get(path.format(order=order.pk))
    assert response.status_code in (200, 404)
    assert await last_seen(order.device) is not None


async def test_a_wrong_token_marks_nothing(order: Order, token: str) -> None:
    forged = token.partition(".")[0] + "." + "A" * 43
    assert (await machine(forged).get(f"/v1/machine/orders/{order.pk}")).status_code == 401
    assert await last_seen(order.device) is None


async def test_the_last_call_is_written_once_per_interval(order: Order, token: str, settings: Any) -> None:
    await machine(token).get(f"/v1/machine/orders/{order.pk}")
    first = await last_seen(order.device)
    await machine(token).get(f"/v1/machine/orders/{order.pk}")
    assert await last_seen(order.device) == first
    stale = first - datetime.timedelta(seconds=settings.DEVICE_SEEN_INTERVAL_SECONDS)
    await Device.objects.filter(pk=order.device_id).aupdate(last_seen_at=stale)
    await machine(token).get(f"/v1/machine/orders/{order.pk}")
    assert await last_seen(order.device) > first


# The vend window: can_make ends with it, a late start is 409 -------------------------------------


async def paid_ago(order: Order, seconds: float) -> None:
    paid_at = timezone.now() - datetime.timedelta(seconds=seconds)
    await Order.objects.filter(pk=order.pk).aupdate(paid_at=paid_at)


async def test_can_make_ends_with_the_vend_window(order: Order, token: str, settings: Any) -> None:
    await paid(order)
    await paid_ago(order, settings.ORDER_MAKE_WINDOW_SECONDS - 5)
    assert (await machine(token).get(f"/v1/machine/orders/{order.pk}")).json()["can_make"] is True
    await paid_ago(order, settings.ORDER_MAKE_WINDOW_SECONDS)
    shown = (await machine(token).get(f"/v1/machine/orders/{order.pk}")).json()
    assert (shown["status"], shown["paid"], shown["can_make"]) == ("paid", True, False)


@pytest.mark.parametrize("closed", [False, True], ids=["before its closing ran", "after its closing"])
async def test_a_start_after_the_vend_window_is_409_naming_the_reason(
    fake: FakeProvider, order: Order, token: str, settings: Any, closed: bool
) -> None:
    await paid_order(fake, order, two_stage=False)
    await paid_ago(order, settings.ORDER_MAKE_WINDOW_SECONDS)
    if closed:
        assert (await make_windows_check())["window closed: refunded"] == 1
    response = await report(token, order.pk, "make_pending")
    status = "refunded" if closed else "paid"
    assert response.status_code == 409
    assert response.json() == {
        "error": f"order {order.pk!r} was not started within ORDER_MAKE_WINDOW_SECONDS="
                 f"{settings.ORDER_MAKE_WINDOW_SECONDS} of its payment and is {status}: its money is returned, "
                 "do not make the drink",
        "reason": "make_window_closed", "status": status, "outcome": "make_pending",
    }
    assert (await Order.objects.aget(pk=order.pk)).status == status


def test_a_machine_poll_is_one_read_and_writes_only_a_stale_last_call(
    order: Order, token: str, django_assert_num_queries: Any
) -> None:
    """The benchmarked hot path: the order, its machine's credential and last call in one read; the
    write only when the stored call is DEVICE_SEEN_INTERVAL_SECONDS old (here: never written yet)."""
    poll = async_to_sync(machine(token).get)
    with django_assert_num_queries(2) as first:
        assert poll(f"/v1/machine/orders/{order.pk}").status_code == 200
    assert first.captured_queries[1]["sql"].startswith('UPDATE "payments_device" SET "last_seen_at"')
    with django_assert_num_queries(1):
        assert poll(f"/v1/machine/orders/{order.pk}").status_code == 200
async def test_a_menu_carries_each_drinks_receipt_line_and_reads_back_as_it_uploads(device: Device, token: str) -> None:
    """Optional, each one of the provider's values; what GET answers, PUT takes unchanged."""
    taxed = {**ITEM, "vat_code": 11, "payment_subject": "service", "payment_mode": "full_payment"}
    plain = {**ITEM, "size": 2, "vat_code": None}
    stored = (await put_menu(token, {"items": [taxed, plain]})).json()
    assert stored == {"items": [taxed, {**plain, **MERCHANTS_RECEIPT_LINE}]}
    row = await MenuItem.objects.aget(device=device, drink_number=4, size=1)
    assert (row.vat_code, row.payment_subject, row.payment_mode) == (11, "service", "full_payment")
    again = await put_menu(token, (await machine(token).get("/v1/machine/menu")).json())
    assert again.json() == stored
