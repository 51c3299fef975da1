"""Order writes: creation from a scan, every status transition, applying provider payments."""

from __future__ import annotations

import datetime
import itertools
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone
from hypothesis import settings as hypothesis_settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from payments import services
from payments.errors import (
    DeviceNotFound,
    DeviceUnavailable,
    DrinkNotOnMenu,
    DrinkUnavailable,
    IllegalTransition,
    MerchantInactive,
    OrderConflict,
    OrderExpired,
    OrderNotFound,
    PriceMismatch,
    ProviderUnavailable,
)
from payments.fake_provider import FakeProvider
from payments.models import Device, MenuItem, Merchant, Order
from payments.provider import Notification, ProviderPayment
from tests.payments.conftest import menu_entries, scan_parameters

# The lifecycle as the issue states it, written out independently of payments.models.TRANSITIONS.
LEGAL = {
    ("created", "pending"), ("created", "failed"),
    ("pending", "paid"), ("pending", "not_paid"), ("pending", "failed"),
    ("paid", "make_pending"), ("paid", "manual_make"),
    ("make_pending", "successful"), ("make_pending", "make_failed"),
    ("make_failed", "manual_make"),
}
STATUSES = ("created", "pending", "paid", "not_paid", "make_pending", "successful", "make_failed", "failed",
            "manual_make")
MARK: dict[str, Callable[..., Order]] = {
    "pending": lambda order_id: services.order_mark_pending(order_id=order_id, provider_payment_id=f"pay-{order_id}"),
    "paid": lambda order_id: services.order_mark_paid(order_id=order_id),
    "not_paid": lambda order_id: services.order_mark_not_paid(order_id=order_id),
    "failed": lambda order_id: services.order_mark_failed(order_id=order_id),
    "make_pending": lambda order_id: services.order_mark_make_pending(order_id=order_id),
    "successful": lambda order_id: services.order_mark_successful(order_id=order_id),
    "make_failed": lambda order_id: services.order_mark_make_failed(order_id=order_id),
    "manual_make": lambda order_id: services.order_mark_manual_make(order_id=order_id),
}


def row(order_id: str) -> dict[str, Any]:
    return Order.objects.values().get(pk=order_id)


# Creating orders from scans -------------------------------------------------------------------


@pytest.mark.django_db
def test_order_create_sets_the_expiry_from_settings(device: Device, settings: Any) -> None:
    settings.ORDER_EXPIRY_MINUTES = 7
    now = timezone.now()
    order = services.order_create(**scan_parameters(), now=now)
    assert (order.status, order.merchant_id, order.price_kopecks) == ("created", device.merchant_id, 15900)
    assert order.expires_at == now + datetime.timedelta(minutes=7)


@pytest.mark.django_db
def test_the_same_scan_twice_is_the_same_order(device: Device) -> None:
    first = services.order_create(**scan_parameters())
    second = services.order_create(**scan_parameters())
    assert first.pk == second.pk and first.expires_at == second.expires_at
    assert Order.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("change", [{"drink_number": 1, "size": 1}, {"size": 3}, {"device_uuid": "machine-2"}])
def test_reusing_an_order_id_for_another_order_is_refused(device: Device, change: dict[str, Any]) -> None:
    other = Device.objects.create(device_uuid="machine-2", merchant=device.merchant, location="Hall")
    services.device_menu_replace(device_id=other.pk, entries=menu_entries())
    original = row(services.order_create(**scan_parameters()).pk)
    with pytest.raises(OrderConflict):
        services.order_create(**scan_parameters(**change))
    assert row(original["id"]) == original


@pytest.mark.django_db
def test_name_and_price_come_from_the_menu_as_it_was_at_the_first_scan(device: Device) -> None:
    order = services.order_create(**scan_parameters(drink_number=2, size=3))
    assert (order.drink_name, order.price_kopecks) == ("Cappuccino", 18900)
    services.device_menu_replace(device_id=device.pk, entries=menu_entries({(2, 3): ("Cappuccino XL", 25000, True)}))
    again = services.order_create(**scan_parameters(drink_number=2, size=3))
    assert (again.drink_name, again.price_kopecks) == ("Cappuccino", 18900)
    assert row(order.pk)["price_kopecks"] == 18900


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"drink_number": 7}, DrinkNotOnMenu, "no drink 7 in size medium"),
        ({"drink_number": 1, "size": 3}, DrinkNotOnMenu, "no drink 1 in size large"),
        ({"drink_number": 3, "size": 3}, DrinkUnavailable, "Latte (large) is not available"),
        ({"quoted_price_kopecks": 1}, PriceMismatch, "says 0.01 ₽, but Cappuccino (medium) costs 159.00 ₽"),
        ({"quoted_price_kopecks": 15901}, PriceMismatch, "says 159.01 ₽"),
    ],
)
def test_a_scan_the_menu_does_not_back_is_refused_and_writes_nothing(
    device: Device, change: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        services.order_create(**scan_parameters(**change))
    assert not Order.objects.exists()


@pytest.mark.django_db
def test_an_older_link_whose_price_is_the_menus_still_scans(device: Device) -> None:
    order = services.order_create(**scan_parameters(quoted_price_kopecks=15900))
    assert (order.drink_name, order.price_kopecks) == ("Cappuccino", 15900)


@pytest.mark.django_db
def test_a_menu_upload_replaces_the_whole_menu(device: Device) -> None:
    services.device_menu_replace(device_id=device.pk, entries=menu_entries({(9, 1): ("Tea", 5000, True)}))
    assert list(MenuItem.objects.values_list("drink_number", "size", "drink_name", "price_kopecks")) == [
        (9, 1, "Tea", 5000)]
    with pytest.raises(DrinkNotOnMenu):
        services.order_create(**scan_parameters())


@pytest.mark.django_db
def test_unknown_device_is_refused(device: Device) -> None:
    with pytest.raises(DeviceNotFound, match="no coffee machine 'machine-9'"):
        services.order_create(**scan_parameters(device_uuid="machine-9"))
    assert not Order.objects.exists()


@pytest.mark.django_db
def test_expired_merchant_cannot_take_orders(device: Device) -> None:
    today = timezone.localdate()
    Merchant.objects.update(active_until=today)
    services.order_create(**scan_parameters(order_id="on-the-last-day"))
    Merchant.objects.update(active_until=today - datetime.timedelta(days=1))
    with pytest.raises(MerchantInactive):
        services.order_create(**scan_parameters(order_id="the-day-after"))
    assert not Order.objects.filter(pk="the-day-after").exists()


@pytest.mark.django_db
@pytest.mark.parametrize(("status", "takes_orders"), [("online", True), ("test", True), ("offline", False), ("error", False)])
def test_device_status_decides_whether_it_takes_orders(device: Device, status: str, takes_orders: bool) -> None:
    Device.objects.update(status=status)
    if takes_orders:
        assert services.order_create(**scan_parameters()).status == "created"
    else:
        with pytest.raises(DeviceUnavailable, match=f"is {status}"):
            services.order_create(**scan_parameters())


@pytest.mark.django_db
def test_an_unpaid_order_expires(device: Device, settings: Any) -> None:
    """Expired orders: a scan after expires_at is refused; the order itself is unchanged."""
    settings.ORDER_EXPIRY_MINUTES = 15
    scanned = timezone.now() - datetime.timedelta(minutes=15)
    order = services.order_create(**scan_parameters(), now=scanned)
    services.order_create(**scan_parameters(), now=scanned + datetime.timedelta(minutes=14, seconds=59))
    with pytest.raises(OrderExpired):
        services.order_create(**scan_parameters(), now=scanned + datetime.timedelta(minutes=15))
    assert row(order.pk)["status"] == "created"


# Transitions ---------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("source", "target"), list(itertools.product(STATUSES, MARK)))
def test_every_transition_is_legal_or_refused_leaving_the_order_unchanged(order: Order, source: str, target: str) -> None:
    Order.objects.filter(pk=order.pk).update(status=source)
    before = row(order.pk)
    if (source, target) in LEGAL:
        assert MARK[target](order.pk).status == target
        assert row(order.pk)["status"] == target
    else:
        with pytest.raises(IllegalTransition) as refused:
            MARK[target](order.pk)
        assert refused.value.message == f"order {order.pk!r} is {source} and cannot become {target}"
        assert row(order.pk) == before


@pytest.mark.django_db
def test_marking_pending_again_with_the_same_payment_changes_nothing(order: Order) -> None:
    services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1")
    before = row(order.pk)
    assert services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1").status == "pending"
    assert row(order.pk) == before
    with pytest.raises(IllegalTransition):
        services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-2")
    assert row(order.pk) == before


@pytest.mark.django_db
def test_transition_of_an_unknown_order_is_refused() -> None:
    with pytest.raises(OrderNotFound):
        services.order_mark_paid(order_id="nope")


class OrderLifecycle(RuleBasedStateMachine):
    """Any sequence of transition attempts: legal ones apply, illegal ones change nothing."""

    @initialize()
    def scan(self) -> None:
        self.order_id = f"o-{uuid.uuid4().hex[:12]}"
        services.order_create(**scan_parameters(order_id=self.order_id))
        self.status = "created"

    # Not `target=`: that keyword is hypothesis's, for bundles.
    @rule(wanted=st.sampled_from(sorted(MARK)))
    def attempt(self, wanted: str) -> None:
        before = row(self.order_id)
        if (self.status, wanted) in LEGAL:
            MARK[wanted](self.order_id)
            self.status = wanted
        elif (self.status, wanted) == ("pending", "pending"):
            # The same payment again (MARK always names the order's one payment): no change.
            MARK[wanted](self.order_id)
            assert row(self.order_id) == before
        else:
            with pytest.raises(IllegalTransition):
                MARK[wanted](self.order_id)
            assert row(self.order_id) == before

    @invariant()
    def stored_status_is_the_model_status(self) -> None:
        if hasattr(self, "order_id"):
            assert row(self.order_id)["status"] == self.status


@pytest.mark.django_db
def test_order_lifecycle_state_machine(device: Device) -> None:
    run_state_machine_as_test(
        OrderLifecycle, settings=hypothesis_settings(max_examples=40, stateful_step_count=12, deadline=None)
    )


# Applying the provider's view of a payment (the webhook's write) ------------------------------


def payment(order: Order, status: str, **overrides: Any) -> ProviderPayment:
    fields = {"id": "pay-1", "status": status, "amount_kopecks": order.price_kopecks, "currency": "RUB",
              "order_id": order.pk, "confirmation_url": None, **overrides}
    return ProviderPayment(**fields)


@pytest.mark.django_db
def test_succeeded_payment_marks_a_pending_order_paid_once(order: Order) -> None:
    services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1")
    assert services.order_apply_payment(order_id=order.pk, payment=payment(order, "succeeded")) == "paid"
    before = row(order.pk)
    # A duplicate notification, and a late canceled one, change nothing.
    assert services.order_apply_payment(order_id=order.pk, payment=payment(order, "succeeded")).startswith("unchanged")
    assert services.order_apply_payment(order_id=order.pk, payment=payment(order, "canceled")).startswith("unchanged")
    assert row(order.pk) == before


@pytest.mark.django_db
def test_canceled_payment_marks_the_order_not_paid(order: Order) -> None:
    services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1")
    assert services.order_apply_payment(order_id=order.pk, payment=payment(order, "canceled")) == "not_paid"
    assert row(order.pk)["status"] == "not_paid"


@pytest.mark.django_db
def test_payment_that_overtakes_its_own_creation_is_recorded_then_applied(order: Order) -> None:
    """Out of order: the notification arrives before the payment id is stored."""
    assert services.order_apply_payment(order_id=order.pk, payment=payment(order, "succeeded")) == "paid"
    assert (row(order.pk)["status"], row(order.pk)["provider_payment_id"]) == ("paid", "pay-1")


@pytest.mark.django_db
def test_still_pending_payment_only_records_the_payment(order: Order) -> None:
    services.order_apply_payment(order_id=order.pk, payment=payment(order, "pending"))
    assert (row(order.pk)["status"], row(order.pk)["provider_payment_id"]) == ("pending", "pay-1")


@pytest.mark.django_db
def test_payment_of_another_order_is_ignored(order: Order) -> None:
    services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1")
    before = row(order.pk)
    outcomes = [
        services.order_apply_payment(order_id=order.pk, payment=payment(order, "succeeded", order_id="other")),
        services.order_apply_payment(order_id=order.pk, payment=payment(order, "succeeded", id="pay-2")),
    ]
    assert all(outcome.startswith("ignored") for outcome in outcomes)
    assert row(order.pk) == before


@pytest.mark.django_db
def test_succeeded_payment_with_the_wrong_amount_fails_the_order(order: Order) -> None:
    services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1")
    wrong = payment(order, "succeeded", amount_kopecks=order.price_kopecks - 1)
    assert services.order_apply_payment(order_id=order.pk, payment=wrong) == "failed: amount does not match"
    assert row(order.pk)["status"] == "failed"


@pytest.mark.django_db
def test_late_notification_does_not_undo_making_the_drink(order: Order) -> None:
    services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1")
    services.order_mark_paid(order_id=order.pk)
    services.order_mark_make_pending(order_id=order.pk)
    assert services.order_apply_payment(order_id=order.pk, payment=payment(order, "succeeded")).startswith("unchanged")
    assert row(order.pk)["status"] == "make_pending"


# The async flows against the fake provider ----------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_payment_start_is_idempotent(fake: FakeProvider, order: Order) -> None:
    """Idempotent payment creation: a second start returns the same provider payment."""
    first = await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back")
    second = await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back")
    assert first == second and first is not None
    assert len(fake.payments) == 1
    stored = await Order.objects.aget(pk=order.pk)
    assert (stored.status, stored.provider_payment_id) == ("pending", next(iter(fake.payments)))


@pytest.mark.django_db(transaction=True)
async def test_payment_start_when_the_provider_fails_leaves_the_order_payable(fake: FakeProvider, order: Order) -> None:
    fake.fail = "error"
    with pytest.raises(ProviderUnavailable):
        await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back")
    assert (await Order.objects.aget(pk=order.pk)).status == "created"
    fake.fail = "none"
    assert await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back")


@pytest.mark.django_db(transaction=True)
async def test_payment_start_for_a_paid_order_has_nothing_to_pay(fake: FakeProvider, order: Order) -> None:
    await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back")
    fake.settle(next(iter(fake.payments)), "succeeded")
    # The notification was lost; starting again finds the payment succeeded and records it.
    assert await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back") is None
    assert (await Order.objects.aget(pk=order.pk)).status == "paid"


@pytest.mark.django_db(transaction=True)
async def test_notification_is_applied_from_the_provider_not_from_its_body(fake: FakeProvider, order: Order) -> None:
    await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back")
    payment_id = next(iter(fake.payments))
    forged = Notification(event="payment.succeeded", payment_id=payment_id, order_id_hint=order.pk)
    assert await services.payment_notification_apply(notification=forged) == "unchanged: order is pending, payment is pending"
    fake.settle(payment_id, "succeeded")
    assert await services.payment_notification_apply(notification=forged) == "paid"
    assert fake.calls[f"GET /payments/{payment_id}"] == 2


@pytest.mark.django_db(transaction=True)
async def test_notification_for_an_unknown_payment_is_ignored(fake: FakeProvider, order: Order) -> None:
    unknown = Notification(event="payment.succeeded", payment_id="not-ours", order_id_hint=None)
    assert await services.payment_notification_apply(notification=unknown) == "ignored: no order for this payment"
    hinted = Notification(event="payment.succeeded", payment_id="not-ours", order_id_hint=order.pk)
    assert await services.payment_notification_apply(notification=hinted) == "ignored: the provider does not know this payment"
    assert (await Order.objects.aget(pk=order.pk)).status == "created"
