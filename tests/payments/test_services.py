"""Order writes: creation from a scan, every status transition, applying provider payments."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.utils import timezone
from hypothesis import event, settings as hypothesis_settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from prometheus_client import REGISTRY

from payments import provider, selectors, services
from payments.errors import (
    LiveShopForTestMachine,
    DeviceNotFound,
    DeviceOffline,
    DeviceUnavailable,
    DrinkNotOnMenu,
    DrinkUnavailable,
    IllegalTransition,
    MakeWindowClosed,
    MerchantInactive,
    NotificationDeferred,
    OrderConflict,
    OrderExpired,
    OrderNotFound,
    PriceMismatch,
    ProviderUnavailable,
    RefundNotAllowed,
)
from devtools.fake_provider import FakeProvider
from payments.models import (
    REPORTED_STATUSES, STAFF_REFUND_SOURCES, Device, DeviceCredential, MenuItem, Merchant, Order, OrderEvent,
)
from payments.provider import Notification, ProviderPayment, ProviderRefund
from tests.payments.conftest import SHOP_ID, menu_entries, paid_order, scan_parameters
from tests.support.order_events import Replayed, events_replay

# The lifecycle as the issue states it, written out independently of payments.models.TRANSITIONS:
# (status, action) -> status after; `two_stage` (the amount is held, not taken) decides some of
# them, and so does the time an action happens at: within the order's vend window (from its
# payment) or not, before its hold expires or not. Anything not listed is refused and changes nothing.
HOLD = datetime.timedelta(hours=1)
LATE = 2 * HOLD  # past any hold and any vend window the test creates


def expected(status: str, two_stage: bool, action: str, *, in_window: bool = True, hold_alive: bool = True
             ) -> tuple[str, bool] | None:
    """(status, two_stage) after `action`, or None when the action must be refused."""
    single = not two_stage
    startable = in_window and (status == "paid" or hold_alive)
    legal: dict[tuple[str, str], tuple[str, bool] | None] = {
        ("created", "pending"): ("pending", two_stage),
        ("created", "failed"): ("failed", two_stage),
        ("pending", "paid"): ("paid", False),
        ("held", "paid"): ("paid", False),
        ("pending", "held"): ("held", True),
        ("pending", "not_paid"): ("not_paid", two_stage),
        ("pending", "failed"): ("failed", two_stage),
        ("paid", "make_pending"): ("make_pending", two_stage) if startable else None,
        ("held", "make_pending"): ("make_pending", two_stage) if startable else None,
        ("make_pending", "successful"): ("capture_pending" if two_stage else "successful", two_stage),
        ("make_pending", "make_failed"): ("make_failed", two_stage),
        ("paid", "make_failed"): ("make_failed", two_stage),
        ("held", "make_failed"): ("make_failed", two_stage),
        ("paid", "manual_make"): ("manual_make", two_stage) if single else None,
        ("make_failed", "manual_make"): ("manual_make", two_stage) if single else None,
        ("make_failed", "money_return"): ("cancel_pending" if two_stage else "refund_pending", two_stage),
        ("held", "hold_release"): ("cancel_pending", two_stage) if two_stage and not hold_alive else None,
        ("make_pending", "hold_release"): ("cancel_pending", two_stage) if two_stage and not hold_alive else None,
        # The vend window closed with the drink not started: the money goes back.
        ("paid", "window_close"): ("refund_pending", two_stage) if not in_window else None,
        ("held", "window_close"): ("cancel_pending", two_stage) if not in_window else None,
    }
    return legal.get((status, action))


# The provider's answers: (status, payment status) -> (status, two_stage) after; else unchanged.
PAYMENT_OUTCOMES = {
    ("pending", "succeeded"): ("paid", False),
    ("pending", "waiting_for_capture"): ("held", True),
    ("pending", "canceled"): ("not_paid", None),
    ("held", "succeeded"): ("paid", False),
    ("held", "canceled"): ("released", None),
    ("capture_pending", "succeeded"): ("successful", None),
    ("capture_pending", "canceled"): ("failed", None),
    ("cancel_pending", "canceled"): ("released", None),
    ("cancel_pending", "succeeded"): ("refund_pending", False),
}
REFUND_OUTCOMES = {("refund_pending", "succeeded"): "refunded", ("refund_pending", "canceled"): "refund_failed"}
STATUSES = ("created", "pending", "paid", "held", "not_paid", "make_pending", "capture_pending", "successful",
            "make_failed", "cancel_pending", "released", "refund_pending", "refunded", "refund_failed", "failed",
            "manual_make")
# Each action at a given time (the services take `now`; the database's own timestamps do not matter).
MARK: dict[str, Callable[[str, datetime.datetime], Any]] = {
    "pending": lambda order_id, now: services.order_mark_pending(order_id=order_id, provider_payment_id=f"pay-{order_id}"),
    "paid": lambda order_id, now: services.order_mark_paid(order_id=order_id, now=now),
    "held": lambda order_id, now: services.order_mark_held(order_id=order_id, hold_expires_at=now + HOLD, now=now),
    "not_paid": lambda order_id, now: services.order_mark_not_paid(order_id=order_id),
    "failed": lambda order_id, now: services.order_mark_failed(order_id=order_id),
    "make_pending": lambda order_id, now: services.order_mark_make_pending(order_id=order_id, now=now),
    "successful": lambda order_id, now: services.order_mark_successful(order_id=order_id),
    "make_failed": lambda order_id, now: services.order_mark_make_failed(order_id=order_id),
    "manual_make": lambda order_id, now: services.order_mark_manual_make(order_id=order_id),
    "money_return": lambda order_id, now: services.order_mark_money_return(order_id=order_id),
    "hold_release": lambda order_id, now: services.order_mark_hold_release(order_id=order_id, now=now),
    "window_close": lambda order_id, now: services.order_close_make_window(order_id=order_id, now=now),
}
# What an action's refusal names as the status it could not reach (None: depends on the stage).
TARGETS = {"money_return": None, "hold_release": "cancel_pending", "window_close": None}
MAKE_WINDOW = datetime.timedelta(seconds=120)  # settings.ORDER_MAKE_WINDOW_SECONDS in the testing layer
# The testing layer's DEVICE_OFFLINE_AFTER_SECONDS and the write interval derived from it.
OFFLINE_AFTER, SEEN_INTERVAL = 120, 30


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
        ({"quoted_price_kopecks": 1}, PriceMismatch, "says 0.01\xa0₽, but Cappuccino (medium) costs 159.00\xa0₽"),
        ({"quoted_price_kopecks": 15901}, PriceMismatch, "says 159.01\xa0₽"),
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
@pytest.mark.parametrize("status", ["online", "test"])
def test_a_machine_silent_too_long_takes_no_order_and_nothing_is_written(
    device: Device, settings: Any, status: str
) -> None:
    Device.objects.update(status=status)
    services.device_credential_issue(device_id=device.pk)
    now = timezone.now()
    services.device_mark_seen(device_id=device.pk, now=now)
    offline = now + datetime.timedelta(seconds=settings.DEVICE_OFFLINE_AFTER_SECONDS + settings.DEVICE_SEEN_INTERVAL_SECONDS)
    assert services.order_create(**scan_parameters(order_id="in-touch"), now=offline - datetime.timedelta(seconds=1))
    with pytest.raises(DeviceOffline, match="has not been in touch with the server") as refused:
        services.order_create(**scan_parameters(order_id="silent"), now=offline)
    assert refused.value.status == 409
    assert not Order.objects.filter(pk="silent").exists()


@pytest.mark.django_db
def test_a_machine_with_a_token_that_never_called_is_offline_one_without_is_judged_by_staff(device: Device) -> None:
    assert services.order_create(**scan_parameters(order_id="no-token")).status == "created"
    services.device_credential_issue(device_id=device.pk)
    with pytest.raises(DeviceOffline):
        services.order_create(**scan_parameters(order_id="never-called"))
    Device.objects.update(status="error", last_seen_at=timezone.now())
    with pytest.raises(DeviceUnavailable, match="is error"):  # staff's own status wins
        services.order_create(**scan_parameters(order_id="staff-says-error"))


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


def test_the_model_knows_the_testing_layers_vend_window(settings: Any) -> None:
    assert datetime.timedelta(seconds=settings.ORDER_MAKE_WINDOW_SECONDS) == MAKE_WINDOW < HOLD


@pytest.mark.django_db
@pytest.mark.parametrize("source", STATUSES)
@pytest.mark.forged_status
def test_every_transition_is_legal_or_refused_leaving_the_order_unchanged(order: Order, source: str) -> None:
    """Every action on an order in `source`, single- and two-stage, within its vend window and hold
    and after both."""
    paid_at = None if source in ("created", "pending") else timezone.now()
    for action, two_stage, late in itertools.product(MARK, (False, True), (False, True)):
        now = timezone.now() + (LATE if late else datetime.timedelta(0))
        Order.objects.filter(pk=order.pk).update(
            status=source, two_stage=two_stage, hold_expires_at=timezone.now() + HOLD, provider_payment_id=f"pay-{order.pk}",
            paid_at=paid_at, make_window_closed_at=None,
        )
        if source == "created":
            Order.objects.filter(pk=order.pk).update(provider_payment_id=None)
        before = row(order.pk)
        in_window = paid_at is None or now < paid_at + MAKE_WINDOW
        after = expected(source, two_stage, action, in_window=in_window, hold_alive=not late)
        case = (source, two_stage, action, late)
        if after is not None:
            MARK[action](order.pk, now)
            assert (row(order.pk)["status"], row(order.pk)["two_stage"]) == after, case
        elif (source, action) == ("pending", "pending"):
            MARK[action](order.pk, now)  # the same payment again: no change
            assert row(order.pk) == before
        else:
            with pytest.raises(IllegalTransition) as refused:
                MARK[action](order.pk, now)
            if isinstance(refused.value, MakeWindowClosed):
                assert (action, in_window, refused.value.current) == ("make_pending", False, source), case
                assert "was not started within ORDER_MAKE_WINDOW_SECONDS=120 of its payment" in refused.value.message
            else:
                assert refused.value.message.startswith(f"order {order.pk!r} is {source} and cannot become "), case
                assert TARGETS.get(action, action) in (None, refused.value.target), case
            assert row(order.pk) == before, case


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
    """Any sequence of transition attempts, provider answers and staff refunds, for single- and
    two-stage orders, on a clock that the steps move: legal ones apply, illegal ones change nothing,
    the money fields follow the status, the vend window (from the payment) decides between a late
    start and the window's closing, as the machine's `can_make` says, and the order's event log,
    replayed after every step, arrives at the order."""

    @initialize(two_stage=st.booleans())
    def scan(self, two_stage: bool) -> None:
        self.order_id = f"o-{uuid.uuid4().hex[:12]}"
        Merchant.objects.update(two_stage_payments=two_stage)
        self.now = timezone.now()
        services.order_create(**scan_parameters(order_id=self.order_id), now=self.now)
        self.status, self.two_stage = "created", two_stage
        self.paid_at: datetime.datetime | None = None
        self.hold_expires_at: datetime.datetime | None = None
        self.window_closed = False
        self.refunded = self.refunding = 0  # kopecks: given back, and asked of the provider by staff

    def conditions(self) -> dict[str, bool]:
        in_window = self.paid_at is None or self.now < self.paid_at + MAKE_WINDOW
        hold_alive = self.hold_expires_at is None or self.now < self.hold_expires_at
        return {"in_window": in_window, "hold_alive": hold_alive}

    def moved(self, status: str, two_stage: bool) -> None:
        if status in ("paid", "held") and self.paid_at is None:
            self.paid_at = self.now
        if status == "held":
            self.hold_expires_at = self.now + HOLD
        self.status, self.two_stage = status, two_stage

    @rule(seconds=st.sampled_from([1, 60, 119, 120, 3600]))
    def time_passes(self, seconds: int) -> None:
        """Past the window's end (120 s), onto it exactly, or past the hold (an hour)."""
        self.now += datetime.timedelta(seconds=seconds)

    # Not `target=`: that keyword is hypothesis's, for bundles.
    @rule(wanted=st.sampled_from(sorted(MARK)))
    def attempt(self, wanted: str) -> None:
        before = row(self.order_id)
        after = expected(self.status, self.two_stage, wanted, **self.conditions())
        if after is not None:
            MARK[wanted](self.order_id, self.now)
            self.moved(*after)
            if wanted == "window_close":
                self.window_closed = True
                event("the vend window closed")
        elif (self.status, wanted) == ("pending", "pending"):
            # The same payment again (MARK always names the order's one payment): no change.
            MARK[wanted](self.order_id, self.now)
            assert row(self.order_id) == before
        else:
            with pytest.raises(IllegalTransition) as refused:
                MARK[wanted](self.order_id, self.now)
            # A late start is told why: the window closed (whether or not its closing ran yet).
            late = wanted == "make_pending" and (self.window_closed or (
                self.status in ("paid", "held") and not self.conditions()["in_window"]))
            assert isinstance(refused.value, MakeWindowClosed) == late
            if late:
                event("a late start refused")
            assert row(self.order_id) == before

    @precondition(lambda self: getattr(self, "status", None) in ("paid", "held"))
    @rule(offset=st.sampled_from([-1, 0, 1]), machine_first=st.booleans())
    def window_race(self, offset: int, machine_first: bool) -> None:
        """The machine's start and the window's closing, around the window's end, in either order:
        exactly one of them wins."""
        assert self.paid_at is not None
        self.now = max(self.now, self.paid_at + MAKE_WINDOW + datetime.timedelta(seconds=offset))
        before = self.status
        actions = ["make_pending", "window_close"]
        for action in actions if machine_first else reversed(actions):
            self.attempt(action)
        assert self.status in ("make_pending", "cancel_pending" if before == "held" else "refund_pending")
        event(f"the window race won by {'the machine' if self.status == 'make_pending' else 'the closing'}")

    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        """A step the model says is legal, towards the money states: random attempts rarely walk the
        long paths (capture, release, refund) before a final status ends the walk."""
        final = {"not_paid", "failed", "manual_make", "released"}
        legal = [a for a in sorted(MARK)
                 if (expected(self.status, self.two_stage, a, **self.conditions()) or ("failed",))[0] not in final]
        answers = sorted(p for (source, p), (to, _) in PAYMENT_OUTCOMES.items() if source == self.status and to not in final)
        refunds = sorted(status for (source, status) in REFUND_OUTCOMES if source == self.status)
        steps = [("mark", a) for a in legal] + [("payment", a) for a in answers] + [("refund", a) for a in refunds]
        if self.status in ("paid", "held"):
            steps.append(("wait", 120))  # towards the window's closing
        if self.status in STAFF_REFUND_SOURCES:
            steps += [("staff", (part, "succeeded")) for part in (1, 2)]
        if not steps:
            return
        kind, argument = data.draw(st.sampled_from(steps))
        {"mark": self.attempt, "payment": self.provider_says, "refund": self.provider_refund_says,
         "wait": self.time_passes, "staff": lambda a: self.staff_refunds(*a)}[kind](argument)

    @rule(status=st.sampled_from(["pending", "waiting_for_capture", "succeeded", "canceled"]))
    def provider_says(self, status: str) -> None:
        """A notification or a reconciliation run re-read the payment: the provider's state applies."""
        order = Order.objects.get(pk=self.order_id)
        services.order_apply_payment(order_id=self.order_id, payment=payment(order, status, id=f"pay-{self.order_id}"),
                                     now=self.now)
        if self.status == "created":
            self.status = "pending"
        after = PAYMENT_OUTCOMES.get((self.status, status))
        if after is not None:
            self.moved(after[0], self.two_stage if after[1] is None else after[1])

    @rule(status=st.sampled_from(["pending", "succeeded", "canceled"]))
    def provider_refund_says(self, status: str) -> None:
        order = Order.objects.get(pk=self.order_id)
        refund = ProviderRefund(id="refund-1", payment_id=order.provider_payment_id or "none", status=status,
                                amount_kopecks=order.price_kopecks, currency="RUB")
        services.order_apply_refund(order_id=self.order_id, refund=refund)
        after = REFUND_OUTCOMES.get((self.status, status), self.status)
        if (self.status, after) == ("refund_pending", "refunded"):
            self.refunded = order.price_kopecks
        self.status = after

    @rule(part=st.sampled_from([1, 2, 3]), answer=st.sampled_from(["succeeded", "pending", "canceled"]))
    def staff_refunds(self, part: int, answer: str) -> None:
        """Staff refund the whole price or a part; the provider refunds it, keeps it pending or cancels
        it. Only an order whose money was taken and kept, never more than is left."""
        order = Order.objects.get(pk=self.order_id)
        amount, key = order.price_kopecks // part, uuid.uuid4()
        allowed = self.status in STAFF_REFUND_SOURCES and amount <= order.price_kopecks - self.refunded - self.refunding
        before = row(self.order_id)
        try:
            services.staff_refund_request(order_id=self.order_id, key=key, amount_kopecks=amount, reason="goodwill",
                                          user_id=None, username="staff")
        except RefundNotAllowed:
            assert not allowed and row(self.order_id) == before
            event("a staff refund refused")
            return
        assert allowed
        refund = ProviderRefund(id=f"refund-{key}", payment_id=order.provider_payment_id or "none", status=answer,
                                amount_kopecks=amount, currency="RUB")
        services.staff_refund_apply(key=key, refund=refund)
        if answer == "succeeded":
            self.refunded += amount
            if self.refunded == order.price_kopecks:
                self.status = "refunded"
        elif answer == "pending":
            self.refunding += amount
        event(f"a staff refund {answer}")

    @invariant()
    def the_event_log_replays_to_the_order(self) -> None:
        if hasattr(self, "order_id"):
            stored = row(self.order_id)
            log = list(OrderEvent.objects.filter(order_id=self.order_id).order_by("id"))
            assert events_replay(log) == Replayed(stored["status"], stored["provider_payment_id"],
                                                  stored["refunded_kopecks"])

    @invariant()
    def stored_order_is_the_model_order(self) -> None:
        if hasattr(self, "order_id"):
            stored = row(self.order_id)
            event(f"reached {self.status}")
            assert (stored["status"], stored["two_stage"]) == (self.status, self.two_stage)
            assert stored["refunded_kopecks"] == self.refunded
            assert (stored["hold_expires_at"] is not None) or self.status not in ("held", "cancel_pending", "capture_pending")
            assert stored["paid_at"] == self.paid_at
            assert (stored["make_window_closed_at"] is not None) == self.window_closed

    @invariant()
    def the_machine_may_start_exactly_when_the_window_allows(self) -> None:
        if hasattr(self, "order_id"):
            state = async_to_sync(selectors.order_get_status)(order_id=self.order_id)
            assert state is not None
            startable = self.status in ("paid", "held") and self.conditions()["in_window"]
            assert state.can_make(now=self.now) == state.as_machine_json(now=self.now)["can_make"] == startable


@pytest.mark.django_db
def test_order_lifecycle_state_machine(device: Device, settings: Any) -> None:
    assert settings.ORDER_HOLD_MAX_MINUTES * 60 == HOLD.total_seconds()  # a hold from the provider's answer
    run_state_machine_as_test(
        OrderLifecycle, settings=hypothesis_settings(max_examples=40, stateful_step_count=14, deadline=None)
    )


class MachineLiveness(RuleBasedStateMachine):
    """A machine's calls, silences, tokens and staff's statuses, and scans of its QR codes on a clock:
    a call is written down only when the stored one is DEVICE_SEEN_INTERVAL_SECONDS old; a scan is
    refused, writing nothing, when staff's status says so or when a machine with a token has been
    silent too long, and never when it called within DEVICE_OFFLINE_AFTER_SECONDS."""

    @initialize()
    def machine(self) -> None:
        self.device_id = Device.objects.get(device_uuid="machine-1").pk
        Device.objects.filter(pk=self.device_id).update(status="online", last_seen_at=None)
        DeviceCredential.objects.filter(device_id=self.device_id).delete()
        self.now = timezone.now()
        self.status, self.has_token = "online", False
        self.stored: datetime.datetime | None = None  # the model's Device.last_seen_at
        self.last_call: datetime.datetime | None = None
        self.scans = 0

    @rule(seconds=st.sampled_from([1, SEEN_INTERVAL - 1, SEEN_INTERVAL, OFFLINE_AFTER - 1, OFFLINE_AFTER,
                                   OFFLINE_AFTER + SEEN_INTERVAL, 3600]))
    def time_passes(self, seconds: int) -> None:
        self.now += datetime.timedelta(seconds=seconds)

    @rule()
    def token_issued(self) -> None:
        services.device_credential_issue(device_id=self.device_id, now=self.now)
        self.has_token = True

    @rule(status=st.sampled_from(["online", "offline", "error", "test"]))
    def staff_set_status(self, status: str) -> None:
        Device.objects.filter(pk=self.device_id).update(status=status)
        self.status = status

    @rule()
    def machine_calls(self) -> None:
        due = self.stored is None or self.now - self.stored >= datetime.timedelta(seconds=SEEN_INTERVAL)
        assert services.device_mark_seen(device_id=self.device_id, now=self.now) == due
        event(f"a call {'written' if due else 'not written'}")
        self.stored = self.now if due else self.stored
        self.last_call = self.now

    @rule()
    def scan(self) -> None:
        self.scans += 1
        order_id = f"scan-{uuid.uuid4().hex[:12]}"
        silent = None if self.stored is None else self.now - self.stored
        offline = self.has_token and (silent is None or silent >= datetime.timedelta(seconds=OFFLINE_AFTER + SEEN_INTERVAL))
        if self.status in ("offline", "error"):  # staff's own status wins
            with pytest.raises(DeviceUnavailable):
                services.order_create(**scan_parameters(order_id=order_id), now=self.now)
        elif offline:
            with pytest.raises(DeviceOffline):
                services.order_create(**scan_parameters(order_id=order_id), now=self.now)
        else:
            assert services.order_create(**scan_parameters(order_id=order_id), now=self.now).status == "created"
        accepted = Order.objects.filter(pk=order_id).exists()
        event(f"a scan {'accepted' if accepted else 'refused'}")
        # What a merchant relies on: a machine that called within DEVICE_OFFLINE_AFTER_SECONDS sells,
        # one silent for that plus the write interval does not.
        if self.status in ("online", "test") and self.last_call is not None:
            if self.now - self.last_call < datetime.timedelta(seconds=OFFLINE_AFTER):
                assert accepted
            if self.has_token and self.now - self.last_call >= datetime.timedelta(seconds=OFFLINE_AFTER + SEEN_INTERVAL):
                assert not accepted

    @invariant()
    def stored_call_is_the_model_call(self) -> None:
        if hasattr(self, "device_id"):
            assert Device.objects.values_list("last_seen_at", flat=True).get(pk=self.device_id) == self.stored


@pytest.mark.django_db
def test_machine_liveness_state_machine(device: Device, settings: Any) -> None:
    assert (settings.DEVICE_OFFLINE_AFTER_SECONDS, settings.DEVICE_SEEN_INTERVAL_SECONDS) == (OFFLINE_AFTER, SEEN_INTERVAL)
    run_state_machine_as_test(
        MachineLiveness, settings=hypothesis_settings(max_examples=30, stateful_step_count=14, deadline=None)
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
@pytest.mark.forged_status  # the order is put back behind the services to test the rule
async def test_expiry_is_one_rule_a_payment_started_in_time_is_followed_to_its_end(fake: FakeProvider, order: Order
                                                                                   ) -> None:
    """Past the window, an order with no payment started is expired everywhere (Pay, the page, the
    poll, the machine); one whose payment was started in time is not: the same payment goes on."""
    late = order.expires_at + datetime.timedelta(seconds=1)
    started = await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back")
    assert await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back", now=late) == started
    assert len(fake.payments) == 1
    state = await selectors.order_get_status(order_id=order.pk)
    assert state is not None and state.as_json(now=late)["expired"] is False
    await Order.objects.filter(pk=order.pk).aupdate(status="created", provider_payment_id=None)
    with pytest.raises(OrderExpired):
        await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back", now=late)
    state = await selectors.order_get_status(order_id=order.pk)
    assert state is not None and state.as_json(now=late)["expired"] is True
    assert (await Order.objects.aget(pk=order.pk)).is_expired(late)


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
async def test_payment_start_on_a_machine_gone_silent_since_the_scan_takes_no_money(
    fake: FakeProvider, order: Order, settings: Any
) -> None:
    await sync_to_async(services.device_credential_issue)(device_id=order.device_id)
    scanned = timezone.now()
    await sync_to_async(services.device_mark_seen)(device_id=order.device_id, now=scanned)
    silent = scanned + datetime.timedelta(
        seconds=settings.DEVICE_OFFLINE_AFTER_SECONDS + settings.DEVICE_SEEN_INTERVAL_SECONDS)
    with pytest.raises(DeviceOffline):
        await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back", now=silent)
    assert fake.payments == {} and (await Order.objects.aget(pk=order.pk)).status == "created"
    assert await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back", now=scanned)


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
@pytest.mark.forged_status
async def test_a_payment_that_finds_the_order_moved_on_sends_the_customer_to_its_status(
    fake: FakeProvider, order: Order
) -> None:
    """The order changed between the read and the write (here: pending under a payment the provider
    does not know): no IllegalTransition page for the customer, the status page instead."""
    await Order.objects.filter(pk=order.pk).aupdate(status="pending", provider_payment_id="another-payment")
    assert await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back") is None
    assert (await Order.objects.aget(pk=order.pk)).provider_payment_id == "another-payment"


@pytest.mark.django_db
def test_an_order_on_a_test_machine_is_a_test_order(device: Device) -> None:
    Device.objects.filter(pk=device.pk).update(status="test")
    order = services.order_create(**scan_parameters())
    Device.objects.filter(pk=device.pk).update(status="online")
    assert order.test and services.order_create(**scan_parameters()).test
    assert not services.order_create(**scan_parameters(order_id="o-online")).test


@pytest.mark.django_db(transaction=True)
@pytest.mark.forged_status
async def test_a_test_order_is_never_sent_to_pay_a_shop_that_takes_real_money(
    fake: FakeProvider, order: Order, caplog: pytest.LogCaptureFixture
) -> None:
    await Order.objects.filter(pk=order.pk).aupdate(test=True)
    fake.live_shops.add(SHOP_ID)
    with pytest.raises(LiveShopForTestMachine):
        await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back")
    payment_id = next(iter(fake.payments))
    # Recorded, so that reconciliation follows the unpaid payment to its end.
    assert (await Order.objects.aget(pk=order.pk)).provider_payment_id == payment_id
    assert [r.levelname for r in caplog.records if "is not a test shop" in r.getMessage()] == ["ERROR"]
    fake.live_shops.clear()
    await Order.objects.filter(pk=order.pk).aupdate(status="created", provider_payment_id=None)
    fake.reset()
    assert await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back")


@pytest.mark.django_db(transaction=True)
async def test_notification_is_applied_from_the_provider_not_from_its_body(fake: FakeProvider, order: Order,
                                                                          settings: Any) -> None:
    settings.PAYMENT_PROVIDER_REREAD_SECONDS = 1
    await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back")
    payment_id = next(iter(fake.payments))
    forged = Notification(event="payment.succeeded", payment_id=payment_id, order_id_hint=order.pk)
    assert await services.payment_notification_apply(notification=forged) == "unchanged: order is pending, payment is pending"
    fake.settle(payment_id, "succeeded")
    # The same claim, read a moment ago and found untrue, is not read again yet: the provider re-sends.
    with pytest.raises(NotificationDeferred):
        await services.payment_notification_apply(notification=forged)
    await asyncio.sleep(settings.PAYMENT_PROVIDER_REREAD_SECONDS)
    assert await services.payment_notification_apply(notification=forged) == "paid"
    assert fake.calls[f"GET /payments/{payment_id}"] == 2


@pytest.mark.django_db(transaction=True)
async def test_notification_for_an_unknown_payment_is_ignored(fake: FakeProvider, order: Order) -> None:
    unknown = Notification(event="payment.succeeded", payment_id="not-ours", order_id_hint=None)
    assert await services.payment_notification_apply(notification=unknown) == "ignored: no order for this payment"
    hinted = Notification(event="payment.succeeded", payment_id="not-ours", order_id_hint=order.pk)
    assert await services.payment_notification_apply(notification=hinted) == "ignored: the provider does not know this payment"
    assert (await Order.objects.aget(pk=order.pk)).status == "created"


# Money: two-stage payments, captures, releases and refunds against the fake provider -----------


@pytest.mark.django_db(transaction=True)
async def test_a_two_stage_order_is_charged_only_when_the_drink_is_made(fake: FakeProvider, order: Order) -> None:
    payment_id = await paid_order(fake, order, two_stage=True)
    assert fake.payments[payment_id].capture is False
    held = await Order.objects.aget(pk=order.pk)
    # Our hold limit or the provider's, whichever is sooner.
    assert held.hold_expires_at is not None and held.hold_expires_at <= fake.payments[payment_id].expires_at
    await sync_to_async(services.order_mark_make_pending)(order_id=order.pk)
    assert fake.payments[payment_id].status == "waiting_for_capture"  # nothing taken while it is made
    made = await services.aorder_mark_successful(order_id=order.pk)
    assert made.status == "successful"
    assert fake.payments[payment_id].status == "succeeded"
    assert fake.calls[f"POST /payments/{payment_id}/capture"] == 1
    assert (await provider.payment_get(shop_id="demo-shop", payment_id=payment_id)).amount_kopecks == order.price_kopecks


@pytest.mark.django_db(transaction=True)
async def test_a_two_stage_drink_that_fails_releases_the_hold(fake: FakeProvider, order: Order) -> None:
    payment_id = await paid_order(fake, order, two_stage=True)
    await sync_to_async(services.order_mark_make_pending)(order_id=order.pk)
    assert (await services.aorder_mark_make_failed(order_id=order.pk)).status == "released"
    assert fake.payments[payment_id].status == "canceled"
    assert fake.payments[payment_id].cancellation["party"] == "merchant"
    assert fake.calls[f"POST /payments/{payment_id}/capture"] == 0


@pytest.mark.django_db(transaction=True)
async def test_a_paid_drink_that_fails_is_refunded_in_full_and_recorded(fake: FakeProvider, order: Order) -> None:
    payment_id = await paid_order(fake, order, two_stage=False)
    await sync_to_async(services.order_mark_make_pending)(order_id=order.pk)
    refunded = await services.aorder_mark_make_failed(order_id=order.pk)
    (refund,) = fake.refunds.values()
    assert (refunded.status, refunded.refund_id, refunded.refund_status) == ("refunded", refund.id, "succeeded")
    assert refunded.refunded_kopecks == order.price_kopecks and refund.payment_id == payment_id
    # The provider's refund.succeeded notification, late: re-read, already recorded.
    told = provider.notification_parse(json.dumps({"type": "notification", "event": "refund.succeeded",
                                                   "object": refund.as_json()}).encode())
    assert await services.payment_notification_apply(notification=told) == "unchanged: order is refunded, refund is succeeded"
    assert fake.calls[f"GET /refunds/{refund.id}"] == 1


@pytest.mark.django_db(transaction=True)
async def test_a_refund_whose_answer_was_lost_is_recorded_from_its_notification(fake: FakeProvider, order: Order) -> None:
    payment_id = await paid_order(fake, order, two_stage=False)
    for mark in (services.order_mark_make_pending, services.order_mark_make_failed, services.order_mark_money_return):
        await sync_to_async(mark)(order_id=order.pk)
    # The refund went through but its answer never came back (a crash after the call).
    refund = await provider.refund_create(shop_id="demo-shop", order_id=order.pk, payment_id=payment_id,
                                          amount_kopecks=order.price_kopecks, description="lost")
    told = Notification(event="refund.succeeded", payment_id=payment_id, order_id_hint=None, refund_id=refund.id)
    assert await services.payment_notification_apply(notification=told) == "refunded"
    stored = await Order.objects.aget(pk=order.pk)
    assert (stored.refund_id, stored.refunded_kopecks) == (refund.id, order.price_kopecks)


@pytest.mark.django_db(transaction=True)
async def test_a_partial_refund_of_the_payment_does_not_count_as_the_customers_money_back(
    fake: FakeProvider, order: Order
) -> None:
    payment_id = await paid_order(fake, order, two_stage=False)
    for mark in (services.order_mark_make_pending, services.order_mark_make_failed, services.order_mark_money_return):
        await sync_to_async(mark)(order_id=order.pk)
    # Staff refunded part of the payment from the provider's dashboard; its notification arrives
    # while the order's own refund (the whole price) is still due.
    partial = await provider.refund_create(shop_id="demo-shop", order_id="dashboard", payment_id=payment_id,
                                           amount_kopecks=order.price_kopecks // 2, description="dashboard")
    told = Notification(event="refund.succeeded", payment_id=payment_id, order_id_hint=None, refund_id=partial.id)
    outcome = await services.payment_notification_apply(notification=told)
    assert outcome == f"ignored: refund of {order.price_kopecks // 2} kopecks, the order's price is {order.price_kopecks}"
    stored = await Order.objects.aget(pk=order.pk)
    assert (stored.status, stored.refund_id, stored.refunded_kopecks) == ("refund_pending", None, 0)


@pytest.mark.django_db(transaction=True)
async def test_a_capture_interrupted_by_the_provider_is_finished_under_the_same_key(fake: FakeProvider, order: Order) -> None:
    payment_id = await paid_order(fake, order, two_stage=True)
    await sync_to_async(services.order_mark_make_pending)(order_id=order.pk)
    fake.fail = "error"
    # The machine's report is recorded (the intent), the capture is left for later.
    assert (await services.aorder_mark_successful(order_id=order.pk)).status == "capture_pending"
    assert fake.payments[payment_id].status == "waiting_for_capture"
    fake.fail = "none"
    assert await services.order_money_settle(order_id=order.pk) == "successful"
    assert await services.order_money_settle(order_id=order.pk) == "unchanged: order is successful"
    key = provider.idempotence_key(order.pk, "capture")
    assert fake.key_routes[("demo-shop", key)] == f"POST /payments/{payment_id}/capture"


@pytest.mark.django_db(transaction=True)
async def test_capturing_a_hold_the_provider_already_dropped_fails_the_order(fake: FakeProvider, order: Order) -> None:
    payment_id = await paid_order(fake, order, two_stage=True)
    await sync_to_async(services.order_mark_make_pending)(order_id=order.pk)
    fake.payments[payment_id].expires_at = datetime.datetime.now(datetime.UTC)  # the provider's hold ran out
    assert (await services.aorder_mark_successful(order_id=order.pk)).status == "failed"
    assert fake.payments[payment_id].status == "canceled"


@pytest.mark.django_db
def test_a_held_order_cannot_be_started_after_its_hold_expires(order: Order) -> None:
    services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1")
    # The provider's own hold may end first, even within the vend window.
    expiry = timezone.now() + MAKE_WINDOW / 2
    services.order_mark_held(order_id=order.pk, hold_expires_at=expiry)
    with pytest.raises(IllegalTransition) as refused:
        services.order_mark_make_pending(order_id=order.pk, now=expiry)
    assert not isinstance(refused.value, MakeWindowClosed)
    assert row(order.pk)["status"] == "held"
    assert services.order_mark_make_pending(order_id=order.pk, now=expiry - datetime.timedelta(seconds=1)).status == "make_pending"


@pytest.mark.django_db
def test_an_order_takes_the_merchants_payment_mode_at_its_creation(device: Device) -> None:
    Merchant.objects.update(two_stage_payments=True)
    order = services.order_create(**scan_parameters())
    Merchant.objects.update(two_stage_payments=False)
    # The body sent under the order's Idempotence-Key must not change with the merchant's setting.
    assert services.order_create(**scan_parameters()).two_stage is order.two_stage is True


@pytest.mark.django_db
@pytest.mark.parametrize("two_stage", [False, True])
def test_a_repeated_machine_report_finds_the_order_among_its_reported_statuses(order: Order, two_stage: bool) -> None:
    """What the machine API needs to answer a repeated report as harmless, whatever the money did since."""
    Order.objects.filter(pk=order.pk).update(two_stage=two_stage)
    services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1")
    if two_stage:
        services.order_mark_held(order_id=order.pk, hold_expires_at=timezone.now() + HOLD)
    else:
        services.order_mark_paid(order_id=order.pk)
    for report, mark in (("make_pending", services.order_mark_make_pending), ("successful", services.order_mark_successful)):
        mark(order_id=order.pk)
        with pytest.raises(IllegalTransition) as repeated:
            mark(order_id=order.pk)
        assert repeated.value.target == report
        assert repeated.value.current in REPORTED_STATUSES[report]
        assert row(order.pk)["status"] in REPORTED_STATUSES[report]


@pytest.mark.django_db
def test_payment_outcomes_are_counted_once_their_transaction_commits(
    order: Order, django_capture_on_commit_callbacks: Any
) -> None:
    def paid() -> float:
        return REGISTRY.get_sample_value("coffee_payments_total", {"outcome": "paid"}) or 0.0

    before = paid()
    services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert services.order_apply_payment(order_id=order.pk, payment=payment(order, "succeeded")) == "paid"
    assert paid() == before  # not committed yet
    for callback in callbacks:
        callback()
    assert paid() == before + 1
    # A repeated notification changes nothing and counts nothing.
    with django_capture_on_commit_callbacks(execute=True):
        services.order_apply_payment(order_id=order.pk, payment=payment(order, "succeeded"))
    assert paid() == before + 1
