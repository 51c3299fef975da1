"""Reconciliation: bring every order whose money is unsettled in line with the provider.

`manage.py reconcile_payments` runs `orders_reconcile`: it deletes orders that never had a payment
past retention and
erases receipt contacts past theirs, then claims the due orders (a compare-and-set of `reconciled_at`;
on PostgreSQL skipping rows another run has locked) and re-reads, releases, refunds or repeats each
one's interrupted provider call under its Idempotence-Key, or re-reads a receipt still being
registered; last, the payments their orders never recorded (payments.orphans). What is due and
why: docs/payments.md, "Reconciliation".
"""

from __future__ import annotations

import datetime
import logging
from collections import Counter
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from payments import orphans, provider, services
from payments.errors import IllegalTransition, PaymentsError
from payments.models import (
    MONEY_PENDING_STATUSES, STAFF_REFUND_OPEN, UNPAID_STATUSES, Order, OrderStatus, StaffRefund, money_records,
)

log = logging.getLogger(__name__)

S = OrderStatus
# Orders claimed per query (claimed orders wait for this run: small batches share the work with a
# concurrent run); a run goes on until nothing due is left or it has handled `limit`.
BATCH = 100
# Unpaid orders deleted per statement: a day of abandoned scans is purged in bounded steps.
PURGE_BATCH = 1000
# A receipt the provider has not registered within three days is one for its support (YooKassa's
# rule): re-read until then.
RECEIPT_PENDING_DAYS = 3
# Settled orders whose payment's or refund's receipt may still be being registered (the other
# statuses that took money are re-read anyway).
_RECEIPT_ONLY_STATUSES = frozenset({S.PAID, S.MAKE_PENDING, S.SUCCESSFUL, S.MANUAL_MAKE, S.REFUNDED, S.REFUND_FAILED})


def _due(*, now: datetime.datetime) -> Q:
    """Orders whose money needs the provider, and which no run has claimed recently."""
    settled_for = now - datetime.timedelta(minutes=settings.ORDER_RECONCILE_AFTER_MINUTES)
    waited = Q(status__in={S.PENDING, S.HELD, S.MAKE_FAILED, *MONEY_PENDING_STATUSES}, updated_at__lte=settled_for)
    hold_aged = Q(status__in={S.HELD, S.MAKE_PENDING}, two_stage=True, hold_expires_at__lte=now)
    receipt_pending = (Q(receipt_registration="pending") | Q(refund_receipt_registration="pending")) & Q(
        status__in=_RECEIPT_ONLY_STATUSES, updated_at__lte=settled_for,
        created_at__gte=now - datetime.timedelta(days=RECEIPT_PENDING_DAYS))
    not_claimed = Q(reconciled_at__isnull=True) | Q(reconciled_at__lte=settled_for)
    return (waited | hold_aged | receipt_pending) & not_claimed


def orders_claim(*, now: datetime.datetime, limit: int) -> tuple[int, list[str]]:
    """(due orders seen, ids of those that this run, and no other, will handle now), at most `limit`."""
    due = _due(now=now)
    candidates = Order.objects.filter(due).order_by("updated_at")
    if connection.features.has_select_for_update_skip_locked:
        # PostgreSQL: rows another run is claiming right now are skipped, not waited for.
        with transaction.atomic():
            ids = list(candidates.select_for_update(skip_locked=True).values_list("pk", flat=True)[:limit])
            return len(ids), [pk for pk in ids if Order.objects.filter(due, pk=pk).update(reconciled_at=now)]
    # SQLite: no transaction around the claims; each compare-and-set UPDATE is atomic alone.
    ids = list(candidates.values_list("pk", flat=True)[:limit])
    return len(ids), [pk for pk in ids if Order.objects.filter(due, pk=pk).update(reconciled_at=now)]


def orders_purge(*, now: datetime.datetime) -> int:
    """Delete, with their events, the orders that never had a payment (models.money_records) and
    expired more than ORDER_RETENTION_DAYS ago, PURGE_BATCH at a time. The only path that deletes
    orders; the delete itself refuses any that had a payment (MoneyRecordsQuerySet)."""
    cutoff = now - datetime.timedelta(days=settings.ORDER_RETENTION_DAYS)
    unpaid = Order.objects.filter(status__in=UNPAID_STATUSES, expires_at__lte=cutoff).exclude(money_records())
    purged = 0
    while ids := list(unpaid.order_by().values_list("pk", flat=True)[:PURGE_BATCH]):
        _rows, deleted = Order.objects.filter(pk__in=ids).delete()
        purged += deleted.get(Order._meta.label, 0)
        if len(ids) < PURGE_BATCH:
            break
    return purged


def orders_contact_erase(*, now: datetime.datetime) -> int:
    """Blank the receipt contact (personal data) of orders made more than ORDER_CONTACT_RETENTION_DAYS
    ago; the order and its money records stay. Not a status change: updated_at stays."""
    cutoff = now - datetime.timedelta(days=settings.ORDER_CONTACT_RETENTION_DAYS)
    return Order.objects.filter(created_at__lte=cutoff).exclude(customer_contact="").update(customer_contact="")


async def _receipt_reread(order: Order) -> str:
    """Re-read a settled order's payment or refund for its receipt's registration; record it."""
    shop_id = order.merchant.shop_id
    if order.receipt_registration == "pending" and order.provider_payment_id:
        payment = await provider.payment_get(shop_id=shop_id, payment_id=order.provider_payment_id)
        if payment is not None:
            await sync_to_async(services.order_apply_payment)(order_id=order.id, payment=payment)
    if order.refund_receipt_registration == "pending" and order.refund_id:
        refund = await provider.refund_get(shop_id=shop_id, refund_id=order.refund_id)
        if refund is not None:
            await sync_to_async(services.order_apply_refund)(order_id=order.id, refund=refund)
    order = await Order.objects.aget(pk=order.pk)
    return f"receipt {order.refund_receipt_registration or order.receipt_registration}"


async def order_reconcile(*, order_id: str, now: datetime.datetime) -> str:
    """Handle one claimed order; say what happened."""
    order = await Order.objects.select_related("merchant").aget(pk=order_id)
    if order.two_stage and order.status in (S.HELD, S.MAKE_PENDING) and order.hold_expires_at and order.hold_expires_at <= now:
        log.warning("order %r: the hold expired %s before the drink was reported made: releasing it",
                    order.id, order.hold_expires_at.isoformat())
        await sync_to_async(services.order_mark_hold_release)(order_id=order.id, now=now)
    elif order.status == S.MAKE_FAILED:
        await sync_to_async(services.order_mark_money_return)(order_id=order.id)
    elif order.status in _RECEIPT_ONLY_STATUSES:
        return await _receipt_reread(order)
    elif order.status in (S.PENDING, S.HELD) and order.provider_payment_id:
        payment = await provider.payment_get(shop_id=order.merchant.shop_id, payment_id=order.provider_payment_id)
        if payment is None:
            log.error("order %r: the provider does not know its payment %s", order.id, order.provider_payment_id)
            return "ignored: the provider does not know this payment"
        return await sync_to_async(services.order_apply_payment)(order_id=order.id, payment=payment)
    return await services.order_money_settle(order_id=order.id)


def _staff_refunds_due(*, now: datetime.datetime) -> list[Any]:
    """Staff refunds the provider has not answered or settled for ORDER_RECONCILE_AFTER_MINUTES."""
    settled_for = now - datetime.timedelta(minutes=settings.ORDER_RECONCILE_AFTER_MINUTES)
    due = StaffRefund.objects.filter(status__in=STAFF_REFUND_OPEN, updated_at__lte=settled_for).order_by("updated_at")
    return list(due.values_list("pk", flat=True)[:BATCH])


async def staff_refunds_reconcile(*, now: datetime.datetime) -> Counter[str]:
    """Send again, under their own keys, the staff refunds a crash or an unanswered call left
    requested, and re-read those still with the provider; counts of what happened."""
    outcomes: Counter[str] = Counter()
    for key in await sync_to_async(_staff_refunds_due)(now=now):
        try:
            outcomes[f"staff refund {(await services.staff_refund_send(key=key)).status}"] += 1
        except PaymentsError as error:
            log.warning("staff refund %s not settled: %s %s", key, error.message, getattr(error, "detail", ""))
            outcomes[f"error: {type(error).__name__}"] += 1
    return outcomes


async def orders_reconcile(*, now: datetime.datetime | None = None, limit: int = 1000, batch: int = BATCH) -> Counter[str]:
    """One reconciliation run; counts of what happened (outcome -> orders), for the command's report."""
    now = now or timezone.now()
    outcomes: Counter[str] = Counter()
    purged = await sync_to_async(orders_purge)(now=now)
    if purged:
        outcomes["purged"] = purged
    erased = await sync_to_async(orders_contact_erase)(now=now)
    if erased:
        log.info("erased the receipt contact of %d orders older than %d days", erased,
                 settings.ORDER_CONTACT_RETENTION_DAYS)
        outcomes["contacts erased"] = erased
    handled = 0
    while handled < limit:
        seen, claimed = await sync_to_async(orders_claim)(now=now, limit=min(batch, limit - handled))
        if not seen:
            break
        # Orders another run claimed first are not ours but count towards the bound: a run ends.
        handled += seen
        for order_id in claimed:
            try:
                outcome = await order_reconcile(order_id=order_id, now=now)
            except IllegalTransition as raced:
                # A machine's report or a notification moved the order between the claim and this
                # write: theirs stands, and the next run looks at the order again if it is still due.
                log.info("order %r moved on while being reconciled: %s", order_id, raced.message)
                outcome = f"moved on: now {raced.current}"
            except PaymentsError as error:
                # The next run retries (after ORDER_RECONCILE_AFTER_MINUTES); the others go on.
                log.warning("order %r not reconciled: %s %s", order_id, error.message, getattr(error, "detail", ""))
                outcome = f"error: {type(error).__name__}"
            log.info("reconciled order %r: %s", order_id, outcome)
            outcomes[outcome.split(":")[0] if outcome.startswith(("unchanged", "ignored", "moved on")) else outcome] += 1
    outcomes.update(await staff_refunds_reconcile(now=now))
    outcomes.update(await orphans.orphans_reconcile(now=now))
    return outcomes
