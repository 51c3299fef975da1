from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from django.utils import timezone, translation

from devtools.fake_provider import RECEIPT_SECONDS, SBP_REFUND_SECONDS, FakeProvider
from payments import provider, services
from payments.forms import MenuEntry
from payments.models import Device, DeviceStatus, Merchant, Order
from payments.notification_limits import NOTIFICATION_READS
from payments.provider import Notification
from tests.conftest import DATABASE_FIXTURES
from tests.support.fake_provider import RunningFake, fake_provider_thread
from tests.support.order_events import order_replay_mismatches

SHOP_ID = "demo-shop"
SECRET = "demo-secret"


@pytest.fixture(autouse=True)
def _orders_arrive_where_their_event_logs_say(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test here that used the database, each order's event log, replayed, arrives at
    its status, provider payment and refunded amount: every write of every flow left its row. Tests
    that set a status behind the services' back (to start from it) are marked `forged_status`."""
    uses_database = request.node.get_closest_marker("django_db") or DATABASE_FIXTURES & set(request.fixturenames)
    if not uses_database or request.node.get_closest_marker("forged_status"):
        yield
        return
    request.getfixturevalue("_django_db_helper")  # set up before, so torn down after, this check
    yield
    assert order_replay_mismatches() == {}


@pytest.fixture(autouse=True)
def _language_restored() -> Iterator[None]:
    """The test client's requests run in the test's thread: a page asked for in Russian leaves Russian
    active for what the test does next, and for the next test."""
    with translation.override(translation.get_language()):
        yield


@pytest.fixture(scope="session")
def fake_server() -> Iterator[RunningFake]:
    with fake_provider_thread(credentials={SHOP_ID: SECRET}) as running:
        yield running


@pytest.fixture
async def fake(fake_server: RunningFake, settings: Any) -> AsyncIterator[FakeProvider]:
    """The fake provider, reset, with the server's settings pointing at it."""
    app = fake_server.app
    app.reset()
    app.fail, app.latency, app.hang_seconds = "none", 0.0, 1.0
    app.receipt_seconds, app.sbp_refund_seconds = RECEIPT_SECONDS, SBP_REFUND_SECONDS
    settings.PAYMENT_PROVIDER_URL = fake_server.api_url
    settings.PAYMENT_PROVIDER_SECRETS = {SHOP_ID: SECRET}
    settings.PAYMENT_PROVIDER_RETRIES = 1
    # Each test a fresh worker: no notification reads of an earlier one.
    NOTIFICATION_READS.clear()
    yield app
    # The shared client belongs to this test's event loop, which ends with the test.
    await provider.aclose()


@pytest.fixture
def merchant() -> Merchant:
    return Merchant.objects.create(
        name="Test Coffee", contact_email="owner@example.com", shop_id=SHOP_ID,
        active_until=timezone.localdate() + datetime.timedelta(days=30),
    )


# machine-1's menu: (drink number, size) -> (name, price in kopecks, available).
MENU = {
    (1, 1): ("Espresso", 9900, True),
    (2, 2): ("Cappuccino", 15900, True),
    (2, 3): ("Cappuccino", 18900, True),
    (3, 3): ("Latte", 19900, False),
}


def menu_entries(menu: dict[tuple[int, int], tuple[str, int, bool]] = MENU) -> list[MenuEntry]:
    return [MenuEntry(drink_number=number, size=size, drink_name=name, price_kopecks=price, available=available)
            for (number, size), (name, price, available) in menu.items()]


@pytest.fixture
def device(merchant: Merchant) -> Device:
    """machine-1, online, with MENU."""
    device = Device.objects.create(device_uuid="machine-1", merchant=merchant, location="Lobby",
                                   status=DeviceStatus.ONLINE)
    services.device_menu_replace(device_id=device.pk, entries=menu_entries())
    return device


def scan_parameters(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of services.order_create for a valid scan of machine-1: a medium Cappuccino,
    15900 kopecks on its menu."""
    return {"order_id": "20250317110122659ba6d7-9ace-cndn", "device_uuid": "machine-1", "drink_number": 2,
            "size": 2, **overrides}


@pytest.fixture
def order(device: Device) -> Order:
    return services.order_create(**scan_parameters())


async def paid_order(fake: FakeProvider, order: Order, *, two_stage: bool) -> str:
    """The order paid by the customer (held, for two-stage) and told by its notification; its payment id."""
    await Merchant.objects.filter(pk=order.merchant_id).aupdate(two_stage_payments=two_stage)
    await Order.objects.filter(pk=order.pk).aupdate(two_stage=two_stage)
    # The machine is in touch while its customer pays (a silent one's orders cannot be paid).
    await Device.objects.filter(pk=order.device_id).aupdate(last_seen_at=timezone.now())
    await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back")
    payment_id = next(iter(fake.payments))
    notification = fake.settle(payment_id, "waiting_for_capture" if two_stage else "succeeded")
    told = Notification(event=notification["event"], payment_id=payment_id, order_id_hint=order.pk)
    assert await services.payment_notification_apply(notification=told) == ("held" if two_stage else "paid")
    return payment_id
