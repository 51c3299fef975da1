"""Writes, and the payment flows that end in them.

Status changes are compare-and-set updates (`UPDATE ... WHERE status IN (legal sources)`): an
illegal transition changes no row and raises IllegalTransition, and two concurrent writers cannot
both win. The writes are sync functions (Django has no async transactions); async callers run
them with `sync_to_async`, which gives them the request's own thread and database connection.
Flows that call the provider are async (`order_payment_start`, `order_payment_recheck`,
`order_money_settle`, `order_mark_successful_and_capture`, `order_mark_make_failed_and_return_money`) and never hold a
transaction across a call: they record the intent, call, then record the answer (docs/payments.md,
Money flows).
"""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext as _

from payments import credentials, events, liveness, provider, receipts, selectors
from payments.errors import (
    DeviceNotFound,
    DeviceOffline,
    DeviceUnavailable,
    DrinkNotOnMenu,
    DrinkUnavailable,
    IllegalTransition,
    MakeWindowClosed,
    LiveShopForTestMachine,
    MerchantInactive,
    OrderConflict,
    OrderExpired,
    OrderNotFound,
    PaymentsError,
    PriceMismatch,
    ProviderRejected,
    RefundNotAllowed,
    ProviderUnavailable,
    ShopNotConfigured,
)
from payments.models import (
    MAKEABLE_STATUSES,
    MONEY_PENDING_STATUSES,
    ORDERING_DEVICE_STATUSES,
    PAYABLE_STATUSES,
    STAFF_REFUND_OPEN,
    STAFF_REFUND_SOURCES,
    Device,
    DeviceCredential,
    DeviceStatus,
    EventOperation,
    MenuItem,
    Merchant,
    Order,
    OrderStatus,
    OrphanPayment,
    OrphanPaymentStatus,
    PaymentMethods,
    Size,
    StaffRefund,
    StaffRefundStatus,
    price_text,
    sources_of,
)
from payments.forms import MenuEntry, contact_parse
from payments.metrics import MAKE_WINDOWS_CLOSED, ORPHAN_PAYMENTS, PAYMENT_RECHECKS, PAYMENTS, REFUNDS
from payments.notification_limits import NOTIFICATION_READS
from payments.provider import Notification, ProviderPayment, ProviderRefund
from payments.outcomes import Kind, Outcome, changed, ignored, unchanged

log = logging.getLogger(__name__)

S = OrderStatus
# The two branches of the money flows (docs/payments.md, Money flows), as conditions of a compare-and-set.
SINGLE_STAGE = Q(two_stage=False)
TWO_STAGE = Q(two_stage=True)



def _outcome_count(counter: Any, outcome: str) -> None:
    """Count a payment or refund outcome once the transaction that records it has committed."""
    transaction.on_commit(counter.labels(outcome).inc)


# The columns a repeated scan must match for it to be the same order.
SCAN_FIELDS = ("device_id", "drink_number", "size")


def _ensure_can_order(merchant: Merchant, device: Device, *, now: datetime.datetime) -> None:
    if not merchant.is_active_on(timezone.localdate(now)):
        raise MerchantInactive(_("This coffee machine's shop cannot take payments at the moment. Please tell the staff."))
    if device.status not in ORDERING_DEVICE_STATUSES:
        raise DeviceUnavailable(_("This coffee machine is %(status)s and cannot take orders.")
                                % {"status": str(device.get_status_display()).lower()})


def _ensure_machine_seen(device: Device, *, now: datetime.datetime) -> None:
    """A machine with an API token must have called lately (payments.liveness): a silent one would
    never see the payment. Its credential is loaded with it (select_related)."""
    connection = liveness.device_connection(has_token=hasattr(device, "credential"), last_seen_at=device.last_seen_at,
                                            now=now)
    if connection == liveness.Connection.OFFLINE:
        raise DeviceOffline(_("This coffee machine has not been in touch with the server for a while, so it could "
                              "not make your drink. Nothing was ordered or charged. Please try again in a minute or "
                              "use another machine."))


def _ensure_not_expired(order: Order, *, now: datetime.datetime) -> None:
    if order.is_expired(now):
        raise OrderExpired(_("This order was not paid in time. Please choose your drink on the machine again."))


def _menu_item_for(device: Device, *, drink_number: int, size: int, quoted_price_kopecks: int | None) -> MenuItem:
    item = MenuItem.objects.filter(device=device, drink_number=drink_number, size=size).first()
    size_name = str(Size(size).label).lower()
    if item is None:
        raise DrinkNotOnMenu(_("This coffee machine has no drink %(number)d in size %(size)s. "
                               "Please choose your drink on the machine again.") % {"number": drink_number, "size": size_name})
    if not item.available:
        raise DrinkUnavailable(_("%(drink)s (%(size)s) is not available on this machine right now. "
                                 "Please choose another drink.") % {"drink": item.drink_name, "size": size_name})
    if quoted_price_kopecks is not None and quoted_price_kopecks != item.price_kopecks:
        log.warning("scan of %s drink %d size %d quotes %d kopecks, the menu says %d", device.device_uuid,
                    drink_number, size, quoted_price_kopecks, item.price_kopecks)
        raise PriceMismatch(_("This QR code says %(quoted)s, but %(drink)s (%(size)s) costs %(price)s on this "
                              "machine. Please choose your drink on the machine again.") % {
            "quoted": price_text(quoted_price_kopecks), "drink": item.drink_name, "size": size_name,
            "price": price_text(item.price_kopecks)})
    return item


def _payment_terms(merchant: Merchant, item: MenuItem) -> dict[str, Any]:
    """What the order's payment body is made of, from the merchant's settings at the first scan:
    one stage or two, the method asked for, the receipt's lines."""
    method = "" if merchant.payment_methods == PaymentMethods.ANY else merchant.payment_methods
    try:
        receipt = receipts.receipt_template(merchant=merchant, item=item)
    except ValueError as missing:
        log.error("merchant %r sends receipts but %s: set its VAT rate in the admin", merchant.name, missing)
        raise ShopNotConfigured(
            _("Payments for this coffee machine are not set up yet. Please tell the staff.")) from None
    # No holds for SBP: an SBP payment is single-stage whatever the merchant's switch.
    two_stage = merchant.two_stage_payments and method != provider.SBP
    return {"two_stage": two_stage, "requested_method": method, "receipt": receipt}


def order_create(
    *,
    order_id: str,
    device_uuid: str,
    drink_number: int,
    size: int,
    quoted_price_kopecks: int | None = None,
    now: datetime.datetime | None = None,
) -> Order:
    """The order behind a scanned QR code: created on the first scan, the same one on later scans.

    Name and price come from the machine's menu, as it is at the first scan. A drink that is not on
    the menu or not available, or an older link's `price` (quoted_price_kopecks) that is not the
    menu's, is refused and writes nothing; so is a scan that reuses an order id for another device,
    drink or size, and a scan of a machine that staff's status or its silence takes out of service.
    """
    now = now or timezone.now()
    device = Device.objects.select_related("merchant", "credential").filter(device_uuid=device_uuid).first()
    if device is None:
        raise DeviceNotFound(_("There is no coffee machine %(device)r. Please scan the QR code on the machine again.")
                             % {"device": device_uuid})
    _ensure_can_order(device.merchant, device, now=now)
    _ensure_machine_seen(device, now=now)
    item = _menu_item_for(device, drink_number=drink_number, size=size, quoted_price_kopecks=quoted_price_kopecks)
    wanted: dict[str, Any] = {"device_id": device.pk, "drink_number": drink_number, "size": size}
    expires_at = now + datetime.timedelta(minutes=settings.ORDER_EXPIRY_MINUTES)
    order = Order.objects.filter(pk=order_id).first() or _order_insert(order_id=order_id, fields={
        **wanted, "drink_name": item.drink_name, "price_kopecks": item.price_kopecks,
        "merchant_id": device.merchant_id, "expires_at": expires_at,
        **_payment_terms(device.merchant, item), "test": device.status == DeviceStatus.TEST,
    })
    if any(getattr(order, field) != value for field, value in wanted.items()):
        raise OrderConflict(_("Order %(order)r already exists for another drink. Please choose your drink again.")
                            % {"order": order_id})
    order.device = device  # already loaded: pages use it without another query
    # The order's merchant too (the receipt's form reads it); a machine's new merchant is not the order's.
    same = order.merchant_id == device.merchant_id
    order.merchant = device.merchant if same else Merchant.objects.get(pk=order.merchant_id)
    _ensure_not_expired(order, now=now)
    return order


def _order_insert(*, order_id: str, fields: dict[str, Any]) -> Order:
    """A new order and its first event, in one transaction; or, when another scan of the same code
    inserted it first, that one (as get_or_create does)."""
    try:
        with transaction.atomic():
            order = Order.objects.create(pk=order_id, **fields)
            events.event_record(order_id=order_id, status_from="", status_to=order.status,
                                happening=events.Happening(EventOperation.SCAN))
            return order
    except IntegrityError:
        return Order.objects.get(pk=order_id)


def device_menu_replace(*, device_id: int, entries: Sequence[MenuEntry]) -> list[MenuItem]:
    """The machine's whole menu becomes `entries`, at once or not at all.

    Orders already scanned keep the name and price they were scanned at.
    """
    with transaction.atomic():
        # Row lock on PostgreSQL (SQLite's IMMEDIATE transaction locks already): two uploads for one
        # machine apply one after the other, never interleaved into a unique-constraint error.
        Device.objects.select_for_update().filter(pk=device_id).values_list("pk", flat=True).get()
        MenuItem.objects.filter(device_id=device_id).delete()
        return MenuItem.objects.bulk_create(MenuItem(device_id=device_id, **vars(entry)) for entry in entries)


def device_credential_issue(*, device_id: int, now: datetime.datetime | None = None) -> str:
    """A new API token for the machine, returned once; only its hash is kept. The old one stops working."""
    issued = credentials.credential_new()
    DeviceCredential.objects.update_or_create(
        device_id=device_id,
        defaults={"key_id": issued.key_id, "token_sha256": issued.token_sha256, "issued_at": now or timezone.now()},
    )
    return issued.token


def device_mark_seen(*, device_id: int, now: datetime.datetime | None = None) -> bool:
    """Write down a machine's call, at most once per DEVICE_SEEN_INTERVAL_SECONDS: a compare-and-set,
    so concurrent calls of one machine write once. Whether this call wrote."""
    now = now or timezone.now()
    stale = Q(last_seen_at__isnull=True) | Q(last_seen_at__lte=liveness.seen_write_cutoff(now=now))
    return bool(Device.objects.filter(stale, pk=device_id).update(last_seen_at=now))


def _order_transition(
    *, order_id: str, target: OrderStatus, sources: frozenset[str] | None = None, when: Q | None = None,
    happening: events.Happening | None = None, **changes: Any,
) -> Order:
    """Move the order to `target` if its current status allows it; else change nothing and raise.

    `sources` narrows the legal sources of `target` (a service may allow only some); `when` adds a
    condition on the row (single- or two-stage, the hold not expired) to the same compare-and-set.
    The change and its event (`happening`, else the operation around the call) are one transaction,
    with the row locked for it (PostgreSQL; SQLite's write transaction is the lock): the event names
    the status the order left. The reads after it are outside, so a SQLite write lock is never held
    across them.
    """
    legal = sources_of(target) if sources is None else sources
    if not legal <= sources_of(target):
        raise ValueError(f"{sorted(legal - sources_of(target))} -> {target} is not in TRANSITIONS")
    with transaction.atomic():
        current = Order.objects.select_for_update().filter(pk=order_id).values_list(
            "status", "provider_payment_id", "refunded_kopecks").first()
        if current is None:
            raise OrderNotFound(_("There is no order %(order)r. Please scan the QR code on the machine again.")
                                % {"order": order_id[:64]})
        rows = Order.objects.filter(pk=order_id, status__in=legal)
        if when is not None:
            rows = rows.filter(when)
        updated = rows.update(status=target, updated_at=timezone.now(), **changes)
        if updated:
            status, payment_id, refunded = current
            given_back = changes.get("refunded_kopecks")
            events.event_record(
                order_id=order_id, status_from=status, status_to=target, happening=happening,
                payment_id=changes.get("provider_payment_id") or payment_id or "",
                refund_id=changes.get("refund_id") or "",
                refunded_kopecks=given_back - refunded if isinstance(given_back, int) else 0,
            )
    if not updated:
        raise IllegalTransition(order_id=order_id, current=current[0], target=target)
    return Order.objects.get(pk=order_id)


def order_mark_pending(*, order_id: str, provider_payment_id: str) -> Order:
    """created -> pending with the provider's payment; again with the same payment: no change.

    The transition's own short transaction only (_order_transition): on SQLite a transaction around
    the reads after it held the database's one write lock across them too, and every concurrent
    payment in every worker queued behind it.
    """
    try:
        return _order_transition(order_id=order_id, target=OrderStatus.PENDING, provider_payment_id=provider_payment_id)
    except IllegalTransition as refused:
        order = Order.objects.get(pk=order_id)
        if order.status == OrderStatus.PENDING and order.provider_payment_id == provider_payment_id:
            return order
        raise refused


def _paid_at(now: datetime.datetime | None) -> Coalesce:
    """The first time the money was taken or held: the vend window starts there, once."""
    return Coalesce(F("paid_at"), Value(now or timezone.now()))


def order_mark_paid(*, order_id: str, now: datetime.datetime | None = None) -> Order:
    """pending | held -> paid: the money is taken (from a held payment: captured outside this server,
    so from now on the order is single-stage and a failed drink is refunded)."""
    return _order_transition(order_id=order_id, target=S.PAID, two_stage=False, paid_at=_paid_at(now))


def order_mark_held(*, order_id: str, hold_expires_at: datetime.datetime, now: datetime.datetime | None = None
                    ) -> Order:
    """pending -> held: the provider holds the amount (waiting_for_capture) until we capture or release it."""
    return _order_transition(order_id=order_id, target=S.HELD, two_stage=True, hold_expires_at=hold_expires_at,
                             paid_at=_paid_at(now))


def order_mark_not_paid(*, order_id: str) -> Order:
    return _order_transition(order_id=order_id, target=OrderStatus.NOT_PAID)


def order_mark_failed(*, order_id: str) -> Order:
    """An unpaid order whose payment cannot be trusted (staff, or a payment of the wrong amount)."""
    return _order_transition(order_id=order_id, target=S.FAILED, sources=frozenset({S.CREATED, S.PENDING}))


def _make_window_cutoff(now: datetime.datetime) -> datetime.datetime:
    """An order paid at or before this has had its vend window (ORDER_MAKE_WINDOW_SECONDS)."""
    return now - datetime.timedelta(seconds=settings.ORDER_MAKE_WINDOW_SECONDS)


def order_mark_make_pending(*, order_id: str, now: datetime.datetime | None = None) -> Order:
    """paid | held -> make_pending within the vend window; a hold that has expired (or is about to be
    released) is refused. The window's condition is part of the compare-and-set, so a late start and
    the window's closing (order_close_make_window) cannot both win; a late start raises
    MakeWindowClosed."""
    now = now or timezone.now()
    hold_alive = Q(status=S.PAID) | Q(hold_expires_at__isnull=True) | Q(hold_expires_at__gt=now)
    in_window = Q(paid_at__isnull=True) | Q(paid_at__gt=_make_window_cutoff(now))
    try:
        return _order_transition(order_id=order_id, target=S.MAKE_PENDING, when=hold_alive & in_window)
    except IllegalTransition:
        found = Order.objects.filter(pk=order_id).values_list("status", "paid_at", "make_window_closed_at").first()
        if found is None:
            raise
        status, paid_at, closed_at = found
        if closed_at is not None or (status in MAKEABLE_STATUSES and paid_at and paid_at <= _make_window_cutoff(now)):
            raise MakeWindowClosed(order_id=order_id, current=status,
                                   window_seconds=settings.ORDER_MAKE_WINDOW_SECONDS) from None
        raise


def order_close_make_window(*, order_id: str, now: datetime.datetime | None = None) -> Order:
    """paid -> refund_pending (single-stage) | held -> cancel_pending (two-stage): the machine has not
    started the order within ORDER_MAKE_WINDOW_SECONDS of its payment. The intent, recorded before
    the provider is called (order_money_settle); a compare-and-set against order_mark_make_pending."""
    now = now or timezone.now()
    # The status says which: paid is money taken (refund it), held is money held (release it).
    held = Order.objects.filter(pk=order_id, status=S.HELD).exists()
    target, source = (S.CANCEL_PENDING, S.HELD) if held else (S.REFUND_PENDING, S.PAID)
    order = _order_transition(order_id=order_id, target=target, sources=frozenset({source}),
                              when=Q(paid_at__lte=_make_window_cutoff(now)), make_window_closed_at=now,
                              happening=events.Happening(EventOperation.WINDOW_CLOSE))
    log.warning("order %r was not started within ORDER_MAKE_WINDOW_SECONDS=%d of its payment at %s: %s",
                order.id, settings.ORDER_MAKE_WINDOW_SECONDS, order.paid_at.isoformat() if order.paid_at else "?",
                "releasing the hold" if held else "refunding")
    _outcome_count(MAKE_WINDOWS_CLOSED, "two_stage" if held else "single_stage")
    return order


def order_flag_make_overdue(*, order_id: str, now: datetime.datetime | None = None) -> bool:
    """A started order not reported made or failed ORDER_MAKE_TIMEOUT_SECONDS after its start (the
    make_pending transition's updated_at) goes to the staff: flagged once, one ERROR line. No money
    moves: the drink may have been poured (docs/payments.md, "The vend window and liveness"). Whether
    this call flagged it."""
    now = now or timezone.now()
    started_before = now - datetime.timedelta(seconds=settings.ORDER_MAKE_TIMEOUT_SECONDS)
    # update(), not _order_transition: the status and updated_at (the start) stay as they are.
    with transaction.atomic():
        flagged = Order.objects.filter(pk=order_id, status=S.MAKE_PENDING, updated_at__lte=started_before,
                                       make_overdue_at__isnull=True).update(make_overdue_at=now)
        if flagged:
            events.event_record(order_id=order_id, status_from=S.MAKE_PENDING, status_to=S.MAKE_PENDING,
                                happening=events.Happening(EventOperation.MAKE_OVERDUE))
    if flagged:
        two_stage = Order.objects.filter(pk=order_id).values_list("two_stage", flat=True).first()
        log.error("order %r was started but not reported made or failed within ORDER_MAKE_TIMEOUT_SECONDS=%d: "
                  "the staff check the machine and mark it made by staff or could not be made%s", order_id,
                  settings.ORDER_MAKE_TIMEOUT_SECONDS,
                  " (the hold is released at ORDER_HOLD_MAX_MINUTES)" if two_stage else "")
    return bool(flagged)


def order_mark_successful(*, order_id: str) -> Order:
    """make_pending -> successful; two-stage: -> capture_pending, the capture being due.

    The held amount is captured only once the machine reports the drink made, never before: a
    customer is charged for drinks made. order_mark_successful_and_capture captures at once; whatever a
    crash or an unreachable provider leaves in capture_pending, reconciliation captures.
    """
    two_stage = Order.objects.filter(pk=order_id).values_list("two_stage", flat=True).first()
    if not two_stage:
        return _order_transition(order_id=order_id, target=S.SUCCESSFUL, sources=frozenset({S.MAKE_PENDING}), when=SINGLE_STAGE)
    try:
        return _order_transition(order_id=order_id, target=S.CAPTURE_PENDING, when=TWO_STAGE)
    except IllegalTransition as refused:
        # The caller asked for successful: say so (capture_pending is this server's own step).
        raise IllegalTransition(order_id=order_id, current=refused.current, target=S.SUCCESSFUL) from None


def order_mark_make_failed(*, order_id: str) -> Order:
    """paid | held | make_pending -> make_failed (a machine may fail before it reports starting): the
    customer's money is due back (order_mark_make_failed_and_return_money, or
    reconciliation after ORDER_RECONCILE_AFTER_MINUTES, during which staff may still hand the drink over)."""
    return _order_transition(order_id=order_id, target=OrderStatus.MAKE_FAILED)


def order_mark_manual_make(*, order_id: str) -> Order:
    """Staff hand the drink over. Single-stage only: a held amount is never captured by hand."""
    return _order_transition(order_id=order_id, target=S.MANUAL_MAKE, when=SINGLE_STAGE)


def order_mark_money_return_due(*, order_id: str) -> Order:
    """make_failed -> refund_pending (single-stage) | cancel_pending (two-stage): the intent, recorded
    before the provider is called."""
    two_stage = Order.objects.filter(pk=order_id).values_list("two_stage", flat=True).first()
    due = events.Happening(EventOperation.MONEY_RETURN)
    if two_stage:
        return _order_transition(order_id=order_id, target=S.CANCEL_PENDING, sources=frozenset({S.MAKE_FAILED}),
                                 when=TWO_STAGE, happening=due)
    return _order_transition(order_id=order_id, target=S.REFUND_PENDING, sources=frozenset({S.MAKE_FAILED}),
                             when=SINGLE_STAGE, happening=due)


def order_mark_hold_release(*, order_id: str, now: datetime.datetime | None = None) -> Order:
    """held | make_pending -> cancel_pending once the hold has aged past its expiry: the drink was
    not reported made in time, so the customer is not charged."""
    now = now or timezone.now()
    return _order_transition(
        order_id=order_id, target=S.CANCEL_PENDING, sources=frozenset({S.HELD, S.MAKE_PENDING}),
        when=TWO_STAGE & Q(hold_expires_at__lte=now), happening=events.Happening(EventOperation.HOLD_EXPIRED),
    )


def _hold_expiry(payment: ProviderPayment, *, now: datetime.datetime) -> datetime.datetime:
    """Ours (ORDER_HOLD_MAX_MINUTES) or the provider's, whichever comes first."""
    ours = now + datetime.timedelta(minutes=settings.ORDER_HOLD_MAX_MINUTES)
    return min(ours, payment.expires_at) if payment.expires_at else ours


# What a payment's provider status means for an order in each status: the target, if any.
_PAYMENT_OUTCOMES: dict[tuple[str, str], OrderStatus] = {
    (S.PENDING, "succeeded"): S.PAID,
    (S.PENDING, "waiting_for_capture"): S.HELD,
    (S.PENDING, "canceled"): S.NOT_PAID,
    (S.HELD, "succeeded"): S.PAID,
    (S.HELD, "canceled"): S.RELEASED,
    (S.CAPTURE_PENDING, "succeeded"): S.SUCCESSFUL,
    (S.CAPTURE_PENDING, "canceled"): S.FAILED,
    (S.CANCEL_PENDING, "canceled"): S.RELEASED,
    (S.CANCEL_PENDING, "succeeded"): S.REFUND_PENDING,
}


def order_apply_payment(*, order_id: str, payment: ProviderPayment, now: datetime.datetime | None = None) -> Outcome:
    """Bring the order in line with the provider's current view of its payment; say what changed.

    Idempotent and order-insensitive: the provider's state is applied, not the notification's
    event, so a duplicate, late or out-of-order notification changes nothing it should not.
    """
    now = now or timezone.now()
    # The operation that got this answer (a creation, a capture, a release), else a read of the payment.
    answered = events.operation(events.operation_current() or EventOperation.PAYMENT_READ, payment_id=payment.id,
                                amount_kopecks=payment.amount_kopecks, detail=f"payment {payment.status}")
    with transaction.atomic(), answered:
        # Row lock on PostgreSQL: concurrent notifications for one order apply one after another.
        order = Order.objects.select_for_update().get(pk=order_id)
        if payment.order_id != order.id or order.provider_payment_id not in (None, payment.id):
            log.warning("payment %s (metadata order %r) does not belong to order %r", payment.id, payment.order_id, order.id)
            return ignored("payment belongs to another order")
        if order.provider_payment_id is None and _orphan_returned(payment.id):
            log.warning("payment %s of order %r is being returned as one its order could not take", payment.id, order.id)
            return ignored("payment is being returned")
        _payment_details_record(order=order, payment=payment)
        taken = payment.status in ("succeeded", "waiting_for_capture")
        if taken and (payment.amount_kopecks, payment.currency) != (order.price_kopecks, provider.CURRENCY):
            log.error("payment %s for order %r is %d %s, the order costs %d", payment.id, order.id,
                      payment.amount_kopecks, payment.currency, order.price_kopecks)
            if order.status in PAYABLE_STATUSES:
                order_mark_failed(order_id=order.id)
                _outcome_count(PAYMENTS, str(S.FAILED))
                return changed("failed: amount does not match")
            return ignored(f"order is {order.status}")
        if order.status == OrderStatus.CREATED:
            # The notification overtook the request that stores the payment id: record it first.
            order = order_mark_pending(order_id=order.id, provider_payment_id=payment.id)
        target = _PAYMENT_OUTCOMES.get((order.status, payment.status))
        if target is None:
            if payment.status == "succeeded" and order.status in (S.NOT_PAID, S.FAILED, S.RELEASED):
                log.error("payment %s succeeded but order %r is %s: refund or hand the drink over",
                          payment.id, order.id, order.status)
            if payment.status == "waiting_for_capture" and order.status in (S.NOT_PAID, S.FAILED):
                log.error("payment %s holds money for order %r, which is %s: release the hold at the provider",
                          payment.id, order.id, order.status)
            if payment.status == "canceled" and order.status == S.MAKE_PENDING and order.two_stage:
                log.error("the hold of payment %s was released while order %r is being made", payment.id, order.id)
            return unchanged(f"order is {order.status}, payment is {payment.status}")
        if target == S.HELD:
            order_mark_held(order_id=order.id, hold_expires_at=_hold_expiry(payment, now=now), now=now)
        elif target == S.PAID:
            if order.status == S.HELD:
                log.warning("the hold of payment %s (order %r) was captured outside this server", payment.id, order.id)
            order_mark_paid(order_id=order.id, now=now)
        elif target == S.FAILED:
            log.error("order %r: the drink was made but the hold of payment %s was gone before its capture",
                      order.id, payment.id)
            _order_transition(order_id=order.id, target=S.FAILED, sources=frozenset({S.CAPTURE_PENDING}))
        elif target == S.REFUND_PENDING:
            log.warning("the hold of payment %s (order %r) was captured: refunding instead", payment.id, order.id)
            _order_transition(order_id=order.id, target=target, sources=frozenset({order.status}), two_stage=False)
        else:
            _order_transition(order_id=order.id, target=target, sources=frozenset({order.status}))
        _outcome_count(PAYMENTS, str(target))
        return changed(str(target))


def _payment_details_record(*, order: Order, payment: ProviderPayment) -> None:
    """The method the customer paid with and the receipt's registration, as the provider says now.
    Not a status change: updated_at (reconciliation's clock) stays."""
    details = {"payment_method": payment.method_type or order.payment_method,
               "receipt_registration": payment.receipt_registration or order.receipt_registration}
    if payment.status == "succeeded":  # a canceled payment's receipt is never registered: no loss
        _receipt_registration_log(order=order, field="receipt_registration", status=details["receipt_registration"])
    if any(getattr(order, name) != value for name, value in details.items()):
        Order.objects.filter(pk=order.pk).update(**details)


def _receipt_registration_log(*, order: Order, field: str, status: str) -> None:
    if status == "canceled" and getattr(order, field) != "canceled":
        what = "payment" if field == "receipt_registration" else "refund"
        log.error("order %r: the provider could not register the %s's receipt: issue it by hand or ask the provider",
                  order.id, what)


def order_apply_refund(*, order_id: str, refund: ProviderRefund) -> Outcome:
    """Record the provider's view of the order's refund; refund_pending -> refunded | refund_failed."""
    answered = events.operation(events.operation_current() or EventOperation.REFUND_READ, refund_id=refund.id,
                                amount_kopecks=refund.amount_kopecks, detail=f"refund {refund.status}")
    with transaction.atomic(), answered:
        order = Order.objects.select_for_update().get(pk=order_id)
        if refund.payment_id != order.provider_payment_id or order.refund_id not in (None, refund.id):
            log.warning("refund %s (payment %s) does not belong to order %r", refund.id, refund.payment_id, order.id)
            return ignored("refund belongs to another payment")
        if refund.receipt_registration and refund.receipt_registration != order.refund_receipt_registration:
            _receipt_registration_log(order=order, field="refund_receipt_registration",
                                      status=refund.receipt_registration)
            Order.objects.filter(pk=order.pk).update(refund_receipt_registration=refund.receipt_registration)
        if order.status != S.REFUND_PENDING:
            return unchanged(f"order is {order.status}, refund is {refund.status}")
        if (refund.amount_kopecks, refund.currency) != (order.price_kopecks, provider.CURRENCY):
            # Ours is always the whole price: another refund of the payment (staff, from the provider's
            # dashboard) does not give the customer all the money back.
            log.error("refund %s of %d %s for order %r is not its price %d: the order's own refund is still due",
                      refund.id, refund.amount_kopecks, refund.currency, order.id, order.price_kopecks)
            return ignored(f"refund of {refund.amount_kopecks} kopecks, the order's price is {order.price_kopecks}")
        recorded = {"refund_id": refund.id, "refund_status": refund.status}
        if refund.status == "succeeded":
            _order_transition(order_id=order.id, target=S.REFUNDED, sources=frozenset({S.REFUND_PENDING}),
                              refunded_kopecks=refund.amount_kopecks, **recorded)
            _outcome_count(REFUNDS, str(S.REFUNDED))
            return changed(str(S.REFUNDED))
        if refund.status == "canceled":
            log.error("refund %s of order %r was canceled by the provider: the staff must return the money",
                      refund.id, order.id)
            _order_transition(order_id=order.id, target=S.REFUND_FAILED, sources=frozenset({S.REFUND_PENDING}),
                              **recorded)
            _outcome_count(REFUNDS, str(S.REFUND_FAILED))
            return changed(str(S.REFUND_FAILED))
        Order.objects.filter(pk=order.id, status=S.REFUND_PENDING).update(**recorded)
        return unchanged(f"order is {order.status}, refund is {refund.status}")


def order_refund_refused(*, order_id: str, provider_status: int) -> Outcome:
    """refund_pending -> refund_failed: the provider refused the refund request itself (4xx), e.g.
    less is left to refund than the price after a refund from its dashboard. The same request,
    under the same Idempotence-Key, would be refused on every run: the staff must return the money."""
    log.error("the provider refused the refund of order %r (HTTP %d): the staff must return the money",
              order_id, provider_status)
    _order_transition(order_id=order_id, target=S.REFUND_FAILED, sources=frozenset({S.REFUND_PENDING}),
                      refund_status="refused", happening=events.Happening(
                          EventOperation.REFUND, detail=f"refund refused (HTTP {provider_status})"))
    _outcome_count(REFUNDS, str(S.REFUND_FAILED))
    return changed(str(S.REFUND_FAILED))


async def order_money_settle(*, order_id: str) -> Outcome:
    """Make the provider call that the order's money status records as due, then record its outcome.

    capture_pending: capture; cancel_pending: release the hold; refund_pending: refund the whole
    price. Each call has its own Idempotence-Key, so repeating this (a retry, a second
    reconciliation run, a restart after a crash) repeats the same operation, never a second one.
    A refused call (e.g. capturing a hold that is gone) is settled by re-reading the payment.
    """
    outcome: Outcome | None = None
    # cancel_pending may turn into refund_pending (the hold was captured): then one more round.
    for _round in range(2):
        order = await selectors.order_get(order_id=order_id)
        if order.status not in MONEY_PENDING_STATUSES or order.provider_payment_id is None:
            return outcome if outcome is not None else unchanged(f"order is {order.status}")
        shop_id, payment_id = order.merchant.shop_id, order.provider_payment_id
        if order.status == S.REFUND_PENDING:
            try:
                refund = await provider.refund_create(
                    shop_id=shop_id, order_id=order.id, payment_id=payment_id, amount_kopecks=order.price_kopecks,
                    description=f"{order.drink_name}, order {order.id}: could not be made",
                )
            except ProviderRejected as refused:
                if refused.credentials_refused:
                    raise  # the operator fixes them, then a reconciliation run refunds
                refuse = sync_to_async(order_refund_refused)
                return await refuse(order_id=order.id, provider_status=refused.provider_status)
            REFUNDS.labels("requested").inc()
            with events.operation(EventOperation.REFUND):
                return await sync_to_async(order_apply_refund)(order_id=order.id, refund=refund)
        calling = EventOperation.CAPTURE if order.status == S.CAPTURE_PENDING else EventOperation.CANCEL
        try:
            if order.status == S.CAPTURE_PENDING:
                payment = await provider.payment_capture(
                    shop_id=shop_id, order_id=order.id, payment_id=payment_id, amount_kopecks=order.price_kopecks
                )
            else:
                payment = await provider.payment_cancel(shop_id=shop_id, order_id=order.id, payment_id=payment_id)
        except ProviderRejected:
            found = await provider.payment_get(shop_id=shop_id, payment_id=payment_id)
            if found is None:
                return ignored("the provider does not know this payment")
            payment, calling = found, EventOperation.PAYMENT_READ
        with events.operation(calling):
            outcome = await sync_to_async(order_apply_payment)(order_id=order.id, payment=payment)
    return outcome


async def _order_money_settle_now(*, order_id: str) -> None:
    """Settle at once if the provider answers; else reconciliation will (the intent is recorded)."""
    try:
        await order_money_settle(order_id=order_id)
    except PaymentsError as error:
        log.warning("order %r: provider call left to reconciliation: %s %s", order_id, error.message,
                    getattr(error, "detail", ""))


async def order_mark_successful_and_capture(*, order_id: str) -> Order:
    """order_mark_successful, then the capture of a held amount, at once."""
    order = await sync_to_async(order_mark_successful)(order_id=order_id)
    if order.status == S.CAPTURE_PENDING:
        await _order_money_settle_now(order_id=order_id)
        order = await Order.objects.aget(pk=order_id)
    return order


async def order_mark_make_failed_and_return_money(*, order_id: str) -> Order:
    """order_mark_make_failed, then the customer's money back at once: refund or release the hold."""
    await sync_to_async(order_mark_make_failed)(order_id=order_id)
    await sync_to_async(order_mark_money_return_due)(order_id=order_id)
    await _order_money_settle_now(order_id=order_id)
    return await Order.objects.aget(pk=order_id)


def order_contact_remember(*, order_id: str, contact: str) -> str:
    """The receipt's contact of an order not yet paid; the first one stays (the payment body sent
    under the order's Idempotence-Key carries it). Returns the order's contact: empty if the order
    is paid or gone meanwhile."""
    Order.objects.filter(pk=order_id, status__in=PAYABLE_STATUSES, customer_contact="").update(customer_contact=contact)
    return Order.objects.filter(pk=order_id).values_list("customer_contact", flat=True).first() or ""


async def _order_contact(order: Order, typed: str | None) -> str:
    """The order's contact for its receipt: the one remembered, or the one the customer typed now
    (empty: the order moved on meanwhile)."""
    if order.customer_contact:
        return order.customer_contact
    contact = contact_parse(typed, phone_allowed=order.merchant.receipt_by_phone)
    return await sync_to_async(order_contact_remember)(order_id=order.id, contact=contact)


async def order_payment_start(
    *, order_id: str, return_url: str, contact: str | None = None, now: datetime.datetime | None = None
) -> str | None:
    """The provider's confirmation URL for the order's payment; None when there is nothing to pay.

    An order with a receipt needs the customer's `contact` (ContactInvalid), as typed, once: it is
    remembered for the order. Provider failures raise and leave the order as it was (still payable).
    """
    now = now or timezone.now()
    order = await selectors.order_get(order_id=order_id)
    if order.status not in PAYABLE_STATUSES:
        return None
    _ensure_not_expired(order, now=now)
    _ensure_can_order(order.merchant, order.device, now=now)
    # The machine may have gone silent since the scan: no money for a drink it would never see.
    _ensure_machine_seen(order.device, now=now)
    receipt = None
    if order.receipt is not None:
        if not (remembered := await _order_contact(order, contact)):
            return None
        receipt = receipts.payment_receipt(template=order.receipt, contact=remembered)
    payment = await provider.payment_create(
        shop_id=order.merchant.shop_id,
        order_id=order.id,
        amount_kopecks=order.price_kopecks,
        description=f"{order.drink_name}, order {order.id}",
        return_url=return_url,
        capture=not order.two_stage,
        receipt=receipt,
        method_type=order.requested_method or None,
    )
    with events.operation(EventOperation.PAYMENT_CREATE, payment_id=payment.id, detail=f"payment {payment.status}"):
        if payment.status != "pending":
            # Paid or canceled already (a notification went astray): record it, show the status.
            await sync_to_async(order_apply_payment)(order_id=order.id, payment=payment)
            return None
        try:
            await sync_to_async(order_mark_pending)(order_id=order.id, provider_payment_id=payment.id)
        except IllegalTransition:
            # A notification moved the order on meanwhile: its status page says where it is.
            return None
    if order.test and not payment.test:
        # Recorded as pending (reconciliation follows it to its end), but nobody is sent to pay it.
        log.error("order %s of test machine %s got a real payment %s: shop %s is not a test shop; the customer "
                  "was not sent to pay", order.id, order.device.device_uuid, payment.id, order.merchant.shop_id)
        raise LiveShopForTestMachine(_("This coffee machine is in test mode, but its shop takes real money, so no "
                                       "payment was started. Please tell the staff."))
    PAYMENTS.labels("started").inc()
    return payment.confirmation_url


async def payment_notification_apply(*, notification: Notification) -> Outcome:
    """Re-read the notified payment (or refund) from the provider and apply it; say what happened."""
    if notification.refund_id is not None:
        return await _refund_notification_apply(notification=notification, refund_id=notification.refund_id)
    order = await selectors.order_find_for_payment(
        payment_id=notification.payment_id, order_id_hint=notification.order_id_hint
    )
    if order is None:
        log.warning("notification %s for payment %s matches no order", notification.event, notification.payment_id)
        return ignored("no order for this payment")
    # No retries of our own: an unanswered notification is sent again by the provider. The read is
    # bounded (payments/notification_limits.py): an id the order does not hold counts as unknown.
    payment = await NOTIFICATION_READS.read(
        key=f"payment:{notification.payment_id}", event=notification.event, statuses=provider.PAYMENT_STATUSES,
        known=order.provider_payment_id == notification.payment_id,
        read=lambda: provider.payment_get(shop_id=order.merchant.shop_id, payment_id=notification.payment_id, retries=0),
    )
    if payment is None:
        log.warning("notification for payment %s that the provider does not know", notification.payment_id)
        return ignored("the provider does not know this payment")
    return await sync_to_async(order_apply_payment)(order_id=order.id, payment=payment)


async def _refund_notification_apply(*, notification: Notification, refund_id: str) -> Outcome:
    order = await selectors.order_find_for_payment(payment_id=notification.payment_id, order_id_hint=None)
    if order is None:
        log.warning("notification %s for refund %s matches no order", notification.event, refund_id)
        return ignored("no order for this payment")
    refund = await NOTIFICATION_READS.read(
        key=f"refund:{refund_id}", event=notification.event, statuses=provider.REFUND_STATUSES,
        known=order.refund_id == refund_id,
        read=lambda: provider.refund_get(shop_id=order.merchant.shop_id, refund_id=refund_id, retries=0),
    )
    if refund is None:
        log.warning("notification for refund %s that the provider does not know", refund_id)
        return ignored("the provider does not know this refund")
    staff = await StaffRefund.objects.filter(refund_id=refund.id, order_id=order.id).values_list("pk", flat=True).afirst()
    if staff is not None:
        return changed(f"staff refund {(await sync_to_async(staff_refund_apply)(key=staff, refund=refund)).status}")
    return await sync_to_async(order_apply_refund)(order_id=order.id, refund=refund)


def order_provider_check_claim(*, order_id: str, now: datetime.datetime | None = None) -> tuple[str, str] | None:
    """(shop id, payment id) of a pending order whose payment this caller may re-read from the
    provider now, or None: no other caller, in any worker or pod, claimed a re-read within
    ORDER_PROVIDER_RECHECK_SECONDS. One compare-and-set UPDATE decides; `updated_at` stays as it
    was (reconciliation's "unchanged for" clock)."""
    now = now or timezone.now()
    last = now - datetime.timedelta(seconds=settings.ORDER_PROVIDER_RECHECK_SECONDS)
    claimed = Order.objects.filter(
        Q(provider_checked_at__isnull=True) | Q(provider_checked_at__lte=last),
        pk=order_id, status=S.PENDING, provider_payment_id__isnull=False,
    ).update(provider_checked_at=now)
    if not claimed:
        return None
    return Order.objects.filter(pk=order_id).values_list("merchant__shop_id", "provider_payment_id").first()


async def order_payment_recheck(*, order_id: str, now: datetime.datetime | None = None) -> bool:
    """The status poll's and the return page's own re-read of a pending order's payment, applied
    as a notification's is (order_apply_payment); whether it changed the order.

    At most one per order per ORDER_PROVIDER_RECHECK_SECONDS (order_provider_check_claim); one
    attempt, cut at ORDER_STATUS_PROVIDER_BUDGET_SECONDS: the caller then answers what it has, and
    a later poll asks again. Nothing the provider does makes the caller fail.
    """
    claim = await sync_to_async(order_provider_check_claim)(order_id=order_id, now=now)
    if claim is None:
        return False
    shop_id, payment_id = claim
    deadline = time.monotonic() + settings.ORDER_STATUS_PROVIDER_BUDGET_SECONDS
    try:
        payment = await provider.payment_get(shop_id=shop_id, payment_id=payment_id, retries=0, deadline=deadline)
        if payment is None:
            log.warning("order %r: the provider does not know its payment %s", order_id, payment_id)
            PAYMENT_RECHECKS.labels("refused").inc()
            return False
        outcome = await sync_to_async(order_apply_payment)(order_id=order_id, payment=payment)
    except ProviderUnavailable as unanswered:
        log.info("order %r: re-reading payment %s got no answer: %s", order_id, payment_id, unanswered.detail)
        PAYMENT_RECHECKS.labels("unanswered").inc()
        return False
    except PaymentsError as error:
        log.warning("order %r: re-reading payment %s failed: %s", order_id, payment_id, error.message)
        PAYMENT_RECHECKS.labels("refused").inc()
        return False
    applied = outcome.kind is Kind.CHANGED
    PAYMENT_RECHECKS.labels("applied" if applied else "unchanged").inc()
    return applied


# Orphan payments: the provider's payments whose order never recorded them ------------------------


def _orphan_returned(payment_id: str) -> bool:
    """Whether reconciliation decided to return this payment (its order can never take it then)."""
    return OrphanPayment.objects.filter(provider_payment_id=payment_id).exists()


def _orphan_refusal(order: Order, payment: ProviderPayment, *, now: datetime.datetime) -> str | None:
    """Why `order` cannot take `payment`, one of its payments that it never recorded; None if it can."""
    if order.provider_payment_id is not None:
        return f"order {order.id!r} has its own payment {order.provider_payment_id}"
    if order.status != S.CREATED:
        return f"order {order.id!r} is {order.status}"
    if order.is_expired(now):
        return f"order {order.id!r} expired at {order.expires_at.isoformat(timespec='seconds')}"
    if (payment.amount_kopecks, payment.currency) != (order.price_kopecks, provider.CURRENCY):
        return f"order {order.id!r} costs {order.price_kopecks} kopecks"
    return None


def orphan_payment_take(*, shop_id: str, payment: ProviderPayment, now: datetime.datetime | None = None
                        ) -> Outcome | OrphanPayment:
    """A payment of the shop whose order (metadata.order_id) never recorded it: attached and applied
    when the order can still take it (what happened, as order_apply_payment says it, after
    "attached: "), else recorded as an OrphanPayment to return (the row), in one transaction with
    the order's row locked, so that a notification applies it to the order or nothing does.

    A payment still pending (nothing taken yet) that the order cannot take is left for a later run.
    """
    now = now or timezone.now()
    with transaction.atomic():
        order = Order.objects.select_for_update(of=("self",)).select_related("merchant").filter(
            pk=payment.order_id).first()
        if order is None or order.provider_payment_id == payment.id:
            return unchanged("known") if order else ignored("no such order")
        if order.merchant.shop_id != shop_id:
            log.warning("payment %s of shop %r names order %r of shop %r: ignored", payment.id, shop_id, order.id,
                        order.merchant.shop_id)
            return ignored("the order is another shop's")
        recorded = OrphanPayment.objects.filter(provider_payment_id=payment.id).first()
        if recorded is not None:
            return recorded
        reason = _orphan_refusal(order, payment, now=now)
        if reason is None:
            log.warning("payment %s of order %r never reached the order: attaching it", payment.id, order.id)
            with events.operation(EventOperation.ORPHAN_FOUND):
                order_apply_payment(order_id=order.id, payment=payment, now=now)
            _outcome_count(ORPHAN_PAYMENTS, "attached")
            return changed(f"attached: {Order.objects.values_list('status', flat=True).get(pk=order.id)}")
        left = payment.amount_kopecks - payment.refunded_kopecks
        if payment.status not in ("succeeded", "waiting_for_capture") or left <= 0:
            return Outcome(f"left: payment is {payment.status}, {reason}", kind=Kind.UNCHANGED)
        log.error("payment %s (%d kopecks, %s) names %s: its money goes back", payment.id, left, payment.status,
                  reason)
        events.event_record(order_id=order.id, status_from=order.status, status_to=order.status,
                            happening=events.Happening(EventOperation.ORPHAN_FOUND, payment_id=payment.id,
                                                       amount_kopecks=left, detail=reason))
        return OrphanPayment.objects.create(
            provider_payment_id=payment.id, shop_id=shop_id, order_id=order.id, amount_kopecks=left, reason=reason,
            provider_status=payment.status,
        )


def _orphan_return_record(*, payment_id: str, status: str, detail: str, **changes: Any) -> None:
    """return_pending -> `status`, and the event on the order the payment names, in one transaction."""
    with transaction.atomic():
        record = OrphanPayment.objects.filter(provider_payment_id=payment_id,
                                              status=OrphanPaymentStatus.RETURN_PENDING).first()
        if record is None:
            return
        OrphanPayment.objects.filter(pk=record.pk, status=OrphanPaymentStatus.RETURN_PENDING).update(
            status=status, updated_at=timezone.now(), **changes)
        current = Order.objects.filter(pk=record.order_id).values_list("status", flat=True).first()
        if current is not None:  # an order that never had a payment of its own stays (money_records)
            events.event_record(order_id=record.order_id, status_from=current, status_to=current,
                                happening=events.Happening(EventOperation.ORPHAN_RETURN, payment_id=payment_id,
                                                           refund_id=changes.get("refund_id", ""),
                                                           amount_kopecks=record.amount_kopecks, detail=detail))


def orphan_payment_returned(*, payment_id: str, provider_status: str, refund_id: str = "") -> Outcome:
    """return_pending -> returned: refunded (refund_id) or its hold released."""
    _orphan_return_record(payment_id=payment_id, status=OrphanPaymentStatus.RETURNED, provider_status=provider_status,
                          refund_id=refund_id, detail=f"refunded by refund {refund_id}" if refund_id else "released")
    outcome = "refunded" if refund_id else "released"
    log.warning("orphan payment %s: %s", payment_id, f"refunded by refund {refund_id}" if refund_id else "released")
    _outcome_count(ORPHAN_PAYMENTS, outcome)
    return changed(f"orphan {outcome}")


def orphan_payment_return_refused(*, payment_id: str, provider_status: str, why: str, refund_id: str = "") -> Outcome:
    """return_pending -> return_failed: the provider refused to give the money back; the staff must."""
    log.error("orphan payment %s: the provider refused to return its money (%s): the staff must return it",
              payment_id, why)
    _orphan_return_record(payment_id=payment_id, status=OrphanPaymentStatus.RETURN_FAILED,
                          provider_status=provider_status, refund_id=refund_id, detail=f"return refused: {why}")
    _outcome_count(ORPHAN_PAYMENTS, "return_failed")
    return changed("orphan return_failed")


# Refunds by staff: of an order whose money was taken and kept, in full or in part ---------------


def staff_refund_left(*, order: Order) -> int:
    """Kopecks staff may still refund: the price (what was taken) less what was refunded and what is
    being refunded."""
    open_refunds = StaffRefund.objects.filter(order_id=order.pk, status__in=STAFF_REFUND_OPEN)
    return order.price_kopecks - order.refunded_kopecks - (open_refunds.aggregate(total=Sum("amount_kopecks"))["total"] or 0)


def _refund_receipt(order: Order, amount_kopecks: int) -> dict[str, Any] | None:
    """A part of a receipt payment is refunded with the part's receipt; the whole payment without
    (the provider makes it from the payment's: docs/payments.md, "Receipts")."""
    if order.receipt is None or amount_kopecks == order.price_kopecks:
        return None
    return receipts.refund_receipt(template=order.receipt, contact=order.customer_contact, amount_kopecks=amount_kopecks)


def staff_refund_request(*, order_id: str, key: uuid.UUID, amount_kopecks: int, reason: str, user_id: int | None,
                         username: str) -> StaffRefund:
    """Record a staff refund before the provider is called (its id, `key`, is the call's
    Idempotence-Key), with the order row locked: never more than is left, only of an order whose
    money was taken and kept (STAFF_REFUND_SOURCES). The same key again is the same refund (a form
    sent twice). Refusals (RefundNotAllowed) name the reason in the staff's language."""
    with transaction.atomic():
        order = Order.objects.select_for_update().filter(pk=order_id).first()
        if order is None:
            raise OrderNotFound(_("There is no order %(order)r. Please scan the QR code on the machine again.")
                                % {"order": order_id[:64]})
        existing = StaffRefund.objects.filter(pk=key).first()
        if existing is not None:
            if (existing.order_id, existing.amount_kopecks) != (order_id, amount_kopecks):
                raise RefundNotAllowed(_("This refund form was already used for another refund. Please open the "
                                         "refund page again."))
            return existing
        if order.status not in STAFF_REFUND_SOURCES:
            raise RefundNotAllowed(_("Order %(order)s is “%(status)s”: staff refund only an order whose money was "
                                     "taken and kept, one that is %(sources)s.") % {
                "order": order.pk, "status": OrderStatus(order.status).label,
                "sources": _(" or ").join(_("“%(status)s”") % {"status": OrderStatus(status).label}
                                          for status in sorted(STAFF_REFUND_SOURCES))})
        left = staff_refund_left(order=order)
        if not 1 <= amount_kopecks <= left:
            raise RefundNotAllowed(_("Order %(order)s: %(amount)s cannot be refunded, %(left)s is left of its price "
                                     "%(price)s (less what was refunded or is being refunded).") % {
                "order": order.pk, "amount": price_text(amount_kopecks), "left": price_text(max(left, 0)),
                "price": price_text(order.price_kopecks)})
        if not reason.strip():
            raise RefundNotAllowed(_("Please give the refund's reason."))
        if order.receipt is not None and amount_kopecks != order.price_kopecks and not order.customer_contact:
            raise RefundNotAllowed(_("Order %(order)s: a refund of part of its price needs a receipt for the "
                                     "customer, whose contact was erased %(days)d days after the order. Refund it at "
                                     "the provider with a receipt instead.") % {
                "order": order.pk, "days": settings.ORDER_CONTACT_RETENTION_DAYS})
        refund = StaffRefund.objects.create(id=key, order_id=order.pk, amount_kopecks=amount_kopecks,
                                            reason=reason.strip(), user_id=user_id, username=username)
        events.event_record(order_id=order.pk, status_from=order.status, status_to=order.status,
                            happening=events.Happening(EventOperation.STAFF_REFUND, amount_kopecks=amount_kopecks,
                                                       detail=refund.reason))
    log.warning("staff refund %s of %d kopecks of order %r requested by %s", refund.pk, amount_kopecks, order_id,
                username)
    return refund


def staff_refund_apply(*, key: uuid.UUID, refund: ProviderRefund) -> StaffRefund:
    """Record the provider's answer to a staff refund, and its event; a refund that completes the
    whole price ends the order refunded. One transaction, the order row locked; the same answer again
    changes nothing but the receipt's registration."""
    with transaction.atomic():
        order_id = StaffRefund.objects.values_list("order_id", flat=True).get(pk=key)
        order = Order.objects.select_for_update().get(pk=order_id)
        record = StaffRefund.objects.select_for_update().get(pk=key)
        registration = refund.receipt_registration or record.receipt_registration
        if registration != record.receipt_registration:
            StaffRefund.objects.filter(pk=key).update(receipt_registration=registration)
        if record.status not in STAFF_REFUND_OPEN or (record.status, record.refund_id) == (refund.status, refund.id):
            return StaffRefund.objects.get(pk=key)
        if (refund.payment_id, refund.amount_kopecks) != (order.provider_payment_id, record.amount_kopecks):
            log.error("refund %s (payment %s, %d kopecks) is not staff refund %s of order %r", refund.id,
                      refund.payment_id, refund.amount_kopecks, key, order.pk)
            return StaffRefund.objects.get(pk=key)
        status = {"succeeded": StaffRefundStatus.SUCCEEDED, "canceled": StaffRefundStatus.CANCELED}.get(
            refund.status, StaffRefundStatus.PENDING)
        StaffRefund.objects.filter(pk=key).update(status=status, refund_id=refund.id, updated_at=timezone.now())
        succeeded = status == StaffRefundStatus.SUCCEEDED
        answered = events.Happening(EventOperation.STAFF_REFUND_ANSWER, payment_id=refund.payment_id,
                                    refund_id=refund.id, amount_kopecks=record.amount_kopecks,
                                    refunded_kopecks=record.amount_kopecks if succeeded else 0,
                                    detail=f"refund {refund.status}")
        given_back = F("refunded_kopecks") + record.amount_kopecks
        if succeeded and order.refunded_kopecks + record.amount_kopecks >= order.price_kopecks:
            _order_transition(order_id=order.pk, target=S.REFUNDED, sources=STAFF_REFUND_SOURCES, happening=answered,
                              refunded_kopecks=given_back)
        else:
            if succeeded:
                Order.objects.filter(pk=order.pk).update(refunded_kopecks=given_back)
            events.event_record(order_id=order.pk, status_from=order.status, status_to=order.status,
                                happening=answered)
        if status == StaffRefundStatus.CANCELED:
            log.error("staff refund %s of order %r was canceled by the provider: nothing was returned", key, order.pk)
    return StaffRefund.objects.get(pk=key)


def staff_refund_refused(*, key: uuid.UUID, why: str) -> StaffRefund:
    """requested -> refused: the provider refused the request itself (4xx); the same request would be
    refused again. Nothing was returned."""
    with transaction.atomic():
        order_id = StaffRefund.objects.values_list("order_id", flat=True).get(pk=key)
        status = Order.objects.select_for_update().values_list("status", flat=True).get(pk=order_id)
        refused = StaffRefund.objects.filter(pk=key, status=StaffRefundStatus.REQUESTED).update(
            status=StaffRefundStatus.REFUSED, updated_at=timezone.now())
        if refused:
            amount = StaffRefund.objects.values_list("amount_kopecks", flat=True).get(pk=key)
            events.event_record(order_id=order_id, status_from=status, status_to=status,
                                happening=events.Happening(EventOperation.STAFF_REFUND_ANSWER, amount_kopecks=amount,
                                                           detail=f"refused: {why}"))
    log.error("staff refund %s of order %r refused: %s", key, order_id, why)
    return StaffRefund.objects.get(pk=key)


async def staff_refund_send(*, key: uuid.UUID) -> StaffRefund:
    """Send a requested staff refund to the provider (again: the same key and body), or re-read one
    the provider has not settled, and record the answer. A provider that does not answer raises and
    leaves the refund as it was: reconciliation sends it again."""
    record = await StaffRefund.objects.select_related("order__merchant").aget(pk=key)
    order = record.order
    shop_id = order.merchant.shop_id
    if record.status == StaffRefundStatus.PENDING and record.refund_id:
        found = await provider.refund_get(shop_id=shop_id, refund_id=record.refund_id)
        if found is None:
            log.error("staff refund %s: the provider does not know its refund %s", key, record.refund_id)
            return record
        return await sync_to_async(staff_refund_apply)(key=key, refund=found)
    if record.status != StaffRefundStatus.REQUESTED or order.provider_payment_id is None:
        return record
    if order.receipt is not None and record.amount_kopecks != order.price_kopecks and not order.customer_contact:
        return await sync_to_async(staff_refund_refused)(key=key, why="the customer's contact for its receipt was erased")
    try:
        refund = await provider.refund_create(
            shop_id=shop_id, order_id=order.pk, payment_id=order.provider_payment_id,
            amount_kopecks=record.amount_kopecks, description=f"Order {order.pk}: {record.reason}",
            receipt=_refund_receipt(order, record.amount_kopecks), key=str(record.pk),
        )
    except ProviderRejected as refused:
        if refused.credentials_refused:
            raise  # the operator fixes them; reconciliation sends it again
        return await sync_to_async(staff_refund_refused)(key=key, why=f"HTTP {refused.provider_status}")
    return await sync_to_async(staff_refund_apply)(key=key, refund=refund)


async def order_staff_refund(*, order_id: str, key: uuid.UUID, amount_kopecks: int, reason: str,
                             user_id: int | None, username: str) -> StaffRefund:
    """A staff refund: recorded (staff_refund_request), sent, its answer recorded. The intent stays
    when the provider does not answer (ProviderUnavailable): reconciliation finishes it."""
    await sync_to_async(staff_refund_request)(order_id=order_id, key=key, amount_kopecks=amount_kopecks,
                                              reason=reason, user_id=user_id, username=username)
    return await staff_refund_send(key=key)


def devices_deactivate(*, device_ids: Sequence[int]) -> int:
    """Machines out of service for good, their records kept (a machine that took money is never
    deleted): they take no more orders; their orders already paid still finish. How many changed."""
    return Device.objects.filter(pk__in=device_ids).exclude(status=DeviceStatus.DEACTIVATED).update(
        status=DeviceStatus.DEACTIVATED)


def merchants_deactivate(*, merchant_ids: Sequence[int], today: datetime.date | None = None) -> int:
    """Merchants whose last active day becomes yesterday (never later than it was): their machines
    take no more orders, their records stay. How many changed."""
    yesterday = (today or timezone.localdate()) - datetime.timedelta(days=1)
    return Merchant.objects.filter(pk__in=merchant_ids, active_until__gt=yesterday).update(active_until=yesterday)
