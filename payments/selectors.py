"""Reads. Async, on Django's async ORM API: they run on the request's event loop."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import F
from django.utils import translation
from django.utils.translation import gettext as _

from payments.compiled_read import CompiledRead
from payments.errors import OrderNotFound
from payments.forms import MENU_RECEIPT_FIELDS
from payments.models import (
    FINAL_STATUSES, MAKEABLE_STATUSES, Device, DeviceCredential, DeviceText, MenuItem, Order, OrderStatus, Size,
    order_expired,
)
from payments.provider import CURRENCY, rubles


S = OrderStatus
# Statuses in which the customer's money is taken or held for the order (a refund or a release
# under way has not given it back yet).
MONEY_TAKEN_STATUSES = frozenset({
    S.PAID, S.HELD, S.MAKE_PENDING, S.CAPTURE_PENDING, S.SUCCESSFUL, S.MAKE_FAILED, S.MANUAL_MAKE,
    S.CANCEL_PENDING, S.REFUND_PENDING, S.REFUND_FAILED,
})
_STATE_COLUMNS = ("status", "expires_at", "drink_number", "drink_name", "size", "price_kopecks", "paid_at",
                  "provider_checked_at")
# The polls: compiled to SQL once (payments/compiled_read.py). The machine's also reads when the
# machine was last seen, so that its call is written down only when that is stale (payments.liveness).
_STATUS_READ = CompiledRead(lambda order_id: Order.objects.only(*_STATE_COLUMNS).filter(pk=order_id))
_MACHINE_READ = CompiledRead(lambda order_id, key_id: Order.objects.only("device", *_STATE_COLUMNS).annotate(
    token_sha256=F("device__credential__token_sha256"), device_last_seen_at=F("device__last_seen_at"),
).filter(pk=order_id, device__credential__key_id=key_id))


@dataclass(frozen=True)
class OrderState:
    """What the status page and the machine need, from one row read by primary key."""

    order_id: str
    status: str
    expires_at: datetime.datetime
    drink_number: int
    drink_name: str
    size: int
    price_kopecks: int
    paid_at: datetime.datetime | None
    provider_checked_at: datetime.datetime | None

    def can_make(self, *, now: datetime.datetime) -> bool:
        """Paid or held, not yet started, within its vend window (ORDER_MAKE_WINDOW_SECONDS of the
        payment; an order paid before the window existed has none)."""
        window = datetime.timedelta(seconds=settings.ORDER_MAKE_WINDOW_SECONDS)
        return self.status in MAKEABLE_STATUSES and (self.paid_at is None or now < self.paid_at + window)

    def as_json(self, *, now: datetime.datetime) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "status": self.status,
            "label": str(OrderStatus(self.status).label),
            "final": self.status in FINAL_STATUSES,
            "expired": order_expired(status=self.status, expires_at=self.expires_at, now=now),
            "drink_number": self.drink_number,
            "drink_name": self.drink_name,
            "size": self.size,
            "size_label": str(Size(self.size).label),
            "amount_kopecks": self.price_kopecks,
            "amount": rubles(self.price_kopecks),
            "currency": CURRENCY,
        }

    def as_machine_json(self, *, now: datetime.datetime) -> dict[str, Any]:
        """The customer's view plus what the machine pours on: has the money been taken, how much."""
        paid = self.status in MONEY_TAKEN_STATUSES
        return {
            **self.as_json(now=now), "paid": paid, "amount_paid_kopecks": self.price_kopecks if paid else 0,
            # The one state in which the machine may start (and pour once make_pending is accepted).
            "can_make": self.can_make(now=now),
        }


def payment_recheck_due(*, status: str, checked_at: datetime.datetime | None, now: datetime.datetime) -> bool:
    """Whether an order in `status`, its payment last re-read at `checked_at`, is one whose poll
    should re-read the payment from the provider (services.order_payment_recheck): pending ones only."""
    return status == S.PENDING and (
        checked_at is None or now - checked_at >= datetime.timedelta(seconds=settings.ORDER_PROVIDER_RECHECK_SECONDS)
    )


def _state_of(order: Order) -> OrderState:
    return OrderState(order.pk, *(getattr(order, column) for column in _STATE_COLUMNS))


async def order_get_status(*, order_id: str) -> OrderState | None:
    """The hot path (every status page polls it): one primary-key read of a few columns."""
    order = await _STATUS_READ.one(order_id=order_id)
    return None if order is None else _state_of(order)


async def device_credential_find(*, key_id: str) -> tuple[int, str, datetime.datetime | None] | None:
    """(device id, token hash, when the machine was last seen) of the credential with this key id:
    one read by a unique index."""
    credentials = DeviceCredential.objects.filter(key_id=key_id)
    return await credentials.values_list("device_id", "token_sha256", "device__last_seen_at").afirst()


async def machine_order_find(*, key_id: str, order_id: str
                             ) -> tuple[int, str, OrderState, datetime.datetime | None] | None:
    """(device id, token hash of the credential with this key id, the order, when the machine was last
    seen) if the order is that credential's machine's, else None: order and credential in one read."""
    order = await _MACHINE_READ.one(order_id=order_id, key_id=key_id)
    if order is None:
        return None
    return order.device_id, order.token_sha256, _state_of(order), order.device_last_seen_at


async def device_menu(*, device_id: int) -> list[dict[str, Any]]:
    fields = ("drink_number", "size", "drink_name", "price_kopecks", "available", *MENU_RECEIPT_FIELDS)
    items = MenuItem.objects.filter(device_id=device_id).order_by("drink_number", "size").values(*fields)
    # The receipt fields as an upload takes them: null where the merchant's apply.
    return [{**item, **{key: item[key] or None for key in MENU_RECEIPT_FIELDS}} async for item in items]


async def order_get(*, order_id: str) -> Order:
    """The order with its device (and the device's API credential, if any) and merchant (one joined
    read), for pages and payments."""
    order = await Order.objects.select_related("device__credential", "merchant").filter(pk=order_id).afirst()
    if order is None:
        raise OrderNotFound(_("There is no order %(order)r. Please scan the QR code on the machine again.")
                            % {"order": order_id[:64]})
    return order


@dataclass(frozen=True)
class CustomerTexts:
    welcome: str
    thank_you: str


async def device_texts_get(*, device: Device) -> CustomerTexts:
    """The merchant's texts for this machine in the active language: that language's own (DeviceText),
    else the machine's text for every language; thank-you else the catalogue's. One read."""
    language = translation.get_supported_language_variant(translation.get_language() or "")
    own = await DeviceText.objects.filter(device=device, language=language).afirst()
    return CustomerTexts(
        welcome=own and own.welcome_text or device.welcome_text,
        thank_you=own and own.thank_you_text or device.thank_you_text or _("Enjoy your drink!"),
    )


async def order_find_for_payment(*, payment_id: str, order_id_hint: str | None) -> Order | None:
    """The order a provider payment belongs to, with its merchant (whose shop can read it).

    The stored payment id first; the order id from the payment's metadata only for the moment
    between the provider creating the payment and this server storing its id.
    """
    orders = Order.objects.select_related("merchant")
    order = await orders.filter(provider_payment_id=payment_id).afirst()
    if order is None and order_id_hint:
        order = await orders.filter(pk=order_id_hint, provider_payment_id__isnull=True).afirst()
    return order
