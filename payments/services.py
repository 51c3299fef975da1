"""Writes, and the payment flows that end in them.

Status changes are compare-and-set updates (`UPDATE ... WHERE status IN (legal sources)`): an
illegal transition changes no row and raises IllegalTransition, and two concurrent writers cannot
both win. The writes are sync functions (Django has no async transactions); async callers run
them with `sync_to_async`, which gives them the request's own thread and database connection.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from payments import credentials, provider, selectors
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
)
from payments.models import (
    ORDERING_DEVICE_STATUSES,
    PAYABLE_STATUSES,
    Device,
    DeviceCredential,
    MenuItem,
    Merchant,
    Order,
    OrderStatus,
    Size,
    sources_of,
)
from payments.forms import MenuEntry
from payments.provider import Notification, ProviderPayment

log = logging.getLogger(__name__)

# The columns a repeated scan must match for it to be the same order.
SCAN_FIELDS = ("device_id", "drink_number", "size")


def _ensure_can_order(merchant: Merchant, device: Device, *, now: datetime.datetime) -> None:
    if not merchant.is_active_on(timezone.localdate(now)):
        raise MerchantInactive("This coffee machine's shop cannot take payments at the moment. Please tell the staff.")
    if device.status not in ORDERING_DEVICE_STATUSES:
        raise DeviceUnavailable(f"This coffee machine is {device.get_status_display().lower()} and cannot take orders.")


def _ensure_not_expired(order: Order, *, now: datetime.datetime) -> None:
    if order.is_expired(now):
        raise OrderExpired("This order was not paid in time. Please choose your drink on the machine again.")


def _menu_item_for(device: Device, *, drink_number: int, size: int, quoted_price_kopecks: int | None) -> MenuItem:
    item = MenuItem.objects.filter(device=device, drink_number=drink_number, size=size).first()
    size_name = Size(size).label.lower()
    if item is None:
        raise DrinkNotOnMenu(f"This coffee machine has no drink {drink_number} in size {size_name}. "
                             "Please choose your drink on the machine again.")
    if not item.available:
        raise DrinkUnavailable(f"{item.drink_name} ({size_name}) is not available on this machine right now. "
                               "Please choose another drink.")
    if quoted_price_kopecks is not None and quoted_price_kopecks != item.price_kopecks:
        log.warning("scan of %s drink %d size %d quotes %d kopecks, the menu says %d", device.device_uuid,
                    drink_number, size, quoted_price_kopecks, item.price_kopecks)
        raise PriceMismatch(f"This QR code says {provider.rubles(quoted_price_kopecks)} ₽, but {item.drink_name} "
                            f"({size_name}) costs {provider.rubles(item.price_kopecks)} ₽ on this machine. "
                            "Please choose your drink on the machine again.")
    return item


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
    drink or size.
    """
    now = now or timezone.now()
    device = Device.objects.select_related("merchant").filter(device_uuid=device_uuid).first()
    if device is None:
        raise DeviceNotFound(f"There is no coffee machine {device_uuid!r}. Please scan the QR code on the machine again.")
    _ensure_can_order(device.merchant, device, now=now)
    item = _menu_item_for(device, drink_number=drink_number, size=size, quoted_price_kopecks=quoted_price_kopecks)
    wanted: dict[str, Any] = {"device_id": device.pk, "drink_number": drink_number, "size": size}
    expires_at = now + datetime.timedelta(minutes=settings.ORDER_EXPIRY_MINUTES)
    # get_or_create: two scans of a new code at once create one order (the loser reads it back).
    order, created = Order.objects.get_or_create(
        pk=order_id,
        defaults={**wanted, "drink_name": item.drink_name, "price_kopecks": item.price_kopecks,
                  "merchant_id": device.merchant_id, "expires_at": expires_at},
    )
    if not created and any(getattr(order, field) != value for field, value in wanted.items()):
        raise OrderConflict(f"Order {order_id!r} already exists for another drink. Please choose your drink again.")
    order.device = device  # already loaded: pages use it without another query
    _ensure_not_expired(order, now=now)
    return order


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


def _order_transition(*, order_id: str, target: OrderStatus, **changes: Any) -> Order:
    """Move the order to `target` if its current status allows it; else change nothing and raise."""
    updated = Order.objects.filter(pk=order_id, status__in=sources_of(target)).update(
        status=target, updated_at=timezone.now(), **changes
    )
    if not updated:
        current = Order.objects.filter(pk=order_id).values_list("status", flat=True).first()
        if current is None:
            raise OrderNotFound(f"There is no order {order_id!r}.")
        raise IllegalTransition(order_id=order_id, current=current, target=target)
    return Order.objects.get(pk=order_id)


def order_mark_pending(*, order_id: str, provider_payment_id: str) -> Order:
    """created -> pending with the provider's payment; again with the same payment: no change.

    No transaction of its own, like the other transitions: the compare-and-set UPDATE decides alone,
    and the reads after it only report. On SQLite a transaction here held the database's one write
    lock across those reads too, and every concurrent payment in every worker queued behind it.
    """
    try:
        return _order_transition(order_id=order_id, target=OrderStatus.PENDING, provider_payment_id=provider_payment_id)
    except IllegalTransition as refused:
        order = Order.objects.get(pk=order_id)
        if order.status == OrderStatus.PENDING and order.provider_payment_id == provider_payment_id:
            return order
        raise refused


def order_mark_paid(*, order_id: str) -> Order:
    return _order_transition(order_id=order_id, target=OrderStatus.PAID)


def order_mark_not_paid(*, order_id: str) -> Order:
    return _order_transition(order_id=order_id, target=OrderStatus.NOT_PAID)


def order_mark_failed(*, order_id: str) -> Order:
    return _order_transition(order_id=order_id, target=OrderStatus.FAILED)


def order_mark_make_pending(*, order_id: str) -> Order:
    return _order_transition(order_id=order_id, target=OrderStatus.MAKE_PENDING)


def order_mark_successful(*, order_id: str) -> Order:
    return _order_transition(order_id=order_id, target=OrderStatus.SUCCESSFUL)


def order_mark_make_failed(*, order_id: str) -> Order:
    return _order_transition(order_id=order_id, target=OrderStatus.MAKE_FAILED)


def order_mark_manual_make(*, order_id: str) -> Order:
    return _order_transition(order_id=order_id, target=OrderStatus.MANUAL_MAKE)


def order_apply_payment(*, order_id: str, payment: ProviderPayment) -> str:
    """Bring the order in line with the provider's current view of its payment; say what changed.

    Idempotent and order-insensitive: the provider's state is applied, not the notification's
    event, so a duplicate, late or out-of-order notification changes nothing it should not.
    """
    with transaction.atomic():
        # Row lock on PostgreSQL: concurrent notifications for one order apply one after another.
        order = Order.objects.select_for_update().get(pk=order_id)
        if payment.order_id != order.id or order.provider_payment_id not in (None, payment.id):
            log.warning("payment %s (metadata order %r) does not belong to order %r", payment.id, payment.order_id, order.id)
            return "ignored: payment belongs to another order"
        if payment.status == "succeeded" and (payment.amount_kopecks, payment.currency) != (order.price_kopecks, provider.CURRENCY):
            log.error("payment %s for order %r is %d %s, the order costs %d", payment.id, order.id,
                      payment.amount_kopecks, payment.currency, order.price_kopecks)
            if order.status in PAYABLE_STATUSES:
                order_mark_failed(order_id=order.id)
                return "failed: amount does not match"
            return f"ignored: order is {order.status}"
        if order.status == OrderStatus.CREATED:
            # The notification overtook the request that stores the payment id: record it first.
            order = order_mark_pending(order_id=order.id, provider_payment_id=payment.id)
        if order.status != OrderStatus.PENDING or payment.status not in ("succeeded", "canceled"):
            if payment.status == "succeeded" and order.status in (OrderStatus.NOT_PAID, OrderStatus.FAILED):
                log.error("payment %s succeeded but order %r is %s: refund or hand the drink over",
                          payment.id, order.id, order.status)
            return f"unchanged: order is {order.status}, payment is {payment.status}"
        if payment.status == "succeeded":
            order_mark_paid(order_id=order.id)
            return "paid"
        order_mark_not_paid(order_id=order.id)
        return "not_paid"


async def order_payment_start(*, order_id: str, return_url: str, now: datetime.datetime | None = None) -> str | None:
    """The provider's confirmation URL for the order's payment; None when there is nothing to pay.

    Provider failures raise and leave the order as it was (still payable).
    """
    now = now or timezone.now()
    order = await selectors.order_get(order_id=order_id)
    if order.status not in PAYABLE_STATUSES:
        return None
    _ensure_not_expired(order, now=now)
    _ensure_can_order(order.merchant, order.device, now=now)
    payment = await provider.payment_create(
        shop_id=order.merchant.shop_id,
        order_id=order.id,
        amount_kopecks=order.price_kopecks,
        description=f"{order.drink_name}, order {order.id}",
        return_url=return_url,
    )
    if payment.status != "pending":
        # Paid or canceled already (a notification went astray): record it, show the status.
        await sync_to_async(order_apply_payment)(order_id=order.id, payment=payment)
        return None
    await sync_to_async(order_mark_pending)(order_id=order.id, provider_payment_id=payment.id)
    return payment.confirmation_url


async def payment_notification_apply(*, notification: Notification) -> str:
    """Re-read the notified payment from the provider and apply it; say what happened."""
    order = await selectors.order_find_for_payment(
        payment_id=notification.payment_id, order_id_hint=notification.order_id_hint
    )
    if order is None:
        log.warning("notification %s for payment %s matches no order", notification.event, notification.payment_id)
        return "ignored: no order for this payment"
    # No retries of our own: an unanswered notification is sent again by the provider.
    payment = await provider.payment_get(shop_id=order.merchant.shop_id, payment_id=notification.payment_id, retries=0)
    if payment is None:
        log.warning("notification for payment %s that the provider does not know", notification.payment_id)
        return "ignored: the provider does not know this payment"
    return await sync_to_async(order_apply_payment)(order_id=order.id, payment=payment)
