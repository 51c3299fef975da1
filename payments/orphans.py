"""Orphan payments: the provider's payments whose order never recorded them (the worker died
between the provider's answer and the database write, or its answer was lost).

Reconciliation runs `orphans_reconcile`: it lists each shop's payments of the last
ORDER_RECONCILE_LIST_HOURS, attaches those that their order (metadata.order_id) can still take and
returns the money of the others, each return under an Idempotence-Key of its payment, recorded as
an OrphanPayment (docs/payments.md, "Reconciliation").
"""

from __future__ import annotations

import datetime
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.conf import settings

from payments import provider, services
from payments.errors import PaymentsError, ProviderRejected
from payments.models import IDENTIFIER, Merchant, Order, OrphanPayment, OrphanPaymentStatus
from payments.outcomes import Kind, Outcome, changed, error as failed
from payments.provider import ProviderPayment

log = logging.getLogger(__name__)

# A run reads at most this many pages of one shop's list (LIST_LIMIT payments each); older ones
# wait for a run with less to read, and a warning says so.
PAGES_MAX = 100
# A payment this much younger than a request may take (GUNICORN_TIMEOUT) may still be on its way to
# its order (the request that created it can still answer): it is listed by a later run. The extra
# seconds allow for the provider's clock.
CLOCK_SKEW_SECONDS = 5
# Payments whose order may take them, or whose money is taken or held.
LISTED_STATUSES = frozenset({"pending", "succeeded", "waiting_for_capture"})
_IDENTIFIER = re.compile(IDENTIFIER)


def _shops() -> list[str]:
    """The shops of this server's merchants that have a key (one without cannot be read)."""
    shops = Merchant.objects.order_by("shop_id").values_list("shop_id", flat=True).distinct()
    return [shop for shop in shops if shop in settings.PAYMENT_PROVIDER_SECRETS]


def _unrecorded(payments: list[ProviderPayment]) -> list[ProviderPayment]:
    """Those of `payments` that name an order and that no order and no OrphanPayment records."""
    named = {p.id: p for p in payments if p.status in LISTED_STATUSES and isinstance(p.order_id, str)
             and _IDENTIFIER.fullmatch(p.order_id)}
    known = set(Order.objects.filter(provider_payment_id__in=named).values_list("provider_payment_id", flat=True))
    known |= set(OrphanPayment.objects.filter(provider_payment_id__in=named).values_list("provider_payment_id",
                                                                                           flat=True))
    return [payment for payment_id, payment in named.items() if payment_id not in known]


async def _listed(*, shop_id: str, now: datetime.datetime) -> AsyncIterator[list[ProviderPayment]]:
    """The shop's payments of the listing window, a page at a time, at most PAGES_MAX pages."""
    before = now - datetime.timedelta(seconds=settings.REQUEST_TIMEOUT + CLOCK_SKEW_SECONDS)
    since = before - datetime.timedelta(hours=settings.ORDER_RECONCILE_LIST_HOURS)
    cursor: str | None = None
    for _page in range(PAGES_MAX):
        payments, cursor = await provider.payment_list(shop_id=shop_id, created_from=since, created_before=before,
                                                       cursor=cursor)
        yield payments
        if cursor is None:
            return
    log.warning("shop %r: listed %d pages of payments created since %s, the rest waits for the next run",
                shop_id, PAGES_MAX, since.isoformat(timespec="seconds"))


async def orphan_payment_return(*, record: OrphanPayment, payment: ProviderPayment | None = None) -> Outcome:
    """Give back the money of a payment its order cannot take: refund it (succeeded) or release it
    (waiting_for_capture), under its own Idempotence-Key, and record the answer; say what happened.

    `payment`: the payment as just listed; else it is read. A provider that does not answer leaves
    the record return_pending: the next run repeats the same call under the same key.
    """
    payment_id, shop_id = record.provider_payment_id, record.shop_id
    if payment is None:
        payment = await provider.payment_get(shop_id=shop_id, payment_id=payment_id)
        if payment is None:
            refuse = sync_to_async(services.orphan_payment_return_refused)
            return await refuse(payment_id=payment_id, provider_status="unknown", why="the provider does not know it")
    if payment.status == "waiting_for_capture":
        key = provider.payment_idempotence_key(payment_id, "cancel")
        try:
            payment = await provider.payment_cancel(shop_id=shop_id, order_id=record.order_id, payment_id=payment_id,
                                                    key=key)
        except ProviderRejected as refused:
            if refused.credentials_refused:
                raise
            # Captured or released meanwhile: what it is now decides.
            payment = await provider.payment_get(shop_id=shop_id, payment_id=payment_id) or payment
    if payment.status == "canceled":
        return await sync_to_async(services.orphan_payment_returned)(payment_id=payment_id, provider_status="canceled")
    if payment.status != "succeeded":
        return changed(f"orphan {payment.status}")
    try:
        refund = await provider.refund_create(
            shop_id=shop_id, order_id=record.order_id, payment_id=payment_id, amount_kopecks=record.amount_kopecks,
            description=f"Order {record.order_id}: a payment the order could not take",
            key=provider.payment_idempotence_key(payment_id, "refund"),
        )
    except ProviderRejected as refused:
        if refused.credentials_refused:
            raise  # the operator's to fix; the next run refunds
        refuse = sync_to_async(services.orphan_payment_return_refused)
        return await refuse(payment_id=payment_id, provider_status="succeeded",
                            why=f"refund refused, HTTP {refused.provider_status}")
    if refund.status == "succeeded":
        return await sync_to_async(services.orphan_payment_returned)(payment_id=payment_id, provider_status="succeeded",
                                                                     refund_id=refund.id)
    if refund.status == "canceled":
        refuse = sync_to_async(services.orphan_payment_return_refused)
        return await refuse(payment_id=payment_id, provider_status="succeeded", why=f"refund {refund.id} canceled",
                            refund_id=refund.id)
    return changed("orphan refund pending")


def _open_records() -> list[OrphanPayment]:
    return list(OrphanPayment.objects.filter(status=OrphanPaymentStatus.RETURN_PENDING).order_by("found_at")[:1000])


async def orphans_reconcile(*, now: datetime.datetime) -> Counter[Outcome]:
    """Returns left unfinished by an earlier run first, then each shop's listing; counts of what
    happened (outcome -> payments). Payments that orders know, or that name no order here, are not
    counted."""
    outcomes: Counter[Outcome] = Counter()
    for record in await sync_to_async(_open_records)():
        try:
            outcomes[await orphan_payment_return(record=record)] += 1
        except PaymentsError as error:
            log.warning("orphan payment %s not returned: %s %s", record.provider_payment_id, error.message,
                        getattr(error, "detail", ""))
            outcomes[failed(type(error).__name__)] += 1
    for shop_id in await sync_to_async(_shops)():
        try:
            async for page in _listed(shop_id=shop_id, now=now):
                for payment in await sync_to_async(_unrecorded)(page):
                    outcome = await _orphan_settle(shop_id=shop_id, payment=payment, now=now)
                    if outcome is not None:
                        outcomes[outcome] += 1
        except PaymentsError as error:
            log.warning("shop %r: payments not listed: %s %s", shop_id, error.message, getattr(error, "detail", ""))
            outcomes[failed(f"listing {type(error).__name__}")] += 1
    return outcomes


async def _orphan_settle(*, shop_id: str, payment: ProviderPayment, now: datetime.datetime) -> Outcome | None:
    """Attach a listed payment its order never recorded, or return its money; the outcome to count."""
    taken = await sync_to_async(services.orphan_payment_take)(shop_id=shop_id, payment=payment, now=now)
    if isinstance(taken, OrphanPayment):
        try:
            return await orphan_payment_return(record=taken, payment=payment)
        except PaymentsError as error:
            log.warning("orphan payment %s not returned: %s %s", payment.id, error.message,
                        getattr(error, "detail", ""))
            return failed(type(error).__name__)
    if taken.kind is Kind.CHANGED:  # attached to its order
        return changed(f"orphan {taken}")
    log.debug("listed payment %s: %s", payment.id, taken)
    return None
