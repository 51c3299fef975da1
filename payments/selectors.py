"""Reads. Async, on Django's async ORM API: they run on the request's event loop."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from payments.errors import OrderNotFound
from payments.models import FINAL_STATUSES, Order, OrderStatus


@dataclass(frozen=True)
class OrderState:
    """What the status page needs, from one row read by primary key."""

    order_id: str
    status: str
    expires_at: datetime.datetime

    def as_json(self, *, now: datetime.datetime) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "status": self.status,
            "label": OrderStatus(self.status).label,
            "final": self.status in FINAL_STATUSES,
            "expired": self.status == OrderStatus.CREATED and now >= self.expires_at,
        }


async def order_get_status(*, order_id: str) -> OrderState | None:
    """The hot path (every status page polls it): one primary-key read of two columns."""
    row = await Order.objects.filter(pk=order_id).values_list("status", "expires_at").afirst()
    if row is None:
        return None
    return OrderState(order_id=order_id, status=row[0], expires_at=row[1])


async def order_get(*, order_id: str) -> Order:
    """The order with its device and merchant (one joined read), for pages and payments."""
    order = await Order.objects.select_related("device", "merchant").filter(pk=order_id).afirst()
    if order is None:
        raise OrderNotFound(f"There is no order {order_id[:64]!r}. Please scan the QR code on the machine again.")
    return order


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
