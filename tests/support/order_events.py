"""An order's event log, replayed: each row must start where the last one ended and follow
payments.models.TRANSITIONS; the log arrives at a status, a provider payment and a refunded amount
that must be the order's own."""

from __future__ import annotations

from dataclasses import dataclass

from payments.models import TRANSITIONS, EventOperation, Order, OrderEvent, OrderStatus


@dataclass(frozen=True)
class Replayed:
    status: str
    provider_payment_id: str | None
    refunded_kopecks: int


def events_replay(events: list[OrderEvent]) -> Replayed:
    """The order the rows (oldest first) describe; AssertionError naming the first row that does not
    follow from the ones before it."""
    assert events, "no event: the order was not created by a scan"
    first = events[0]
    assert (first.status_from, first.status_to, first.operation) == ("", OrderStatus.CREATED, EventOperation.SCAN), first
    status, payment_id, refunded = first.status_to, None, 0
    for event in events[1:]:
        assert event.status_from == status, f"{event}: the log was at {status}"
        if event.status_to != status:
            assert event.status_to in TRANSITIONS[status], f"{event}: not a transition"
            if (status, event.status_to) == (OrderStatus.CREATED, OrderStatus.PENDING):
                payment_id = event.payment_id
        status = event.status_to
        refunded += event.refunded_kopecks
    return Replayed(status=status, provider_payment_id=payment_id, refunded_kopecks=refunded)


def order_replay_mismatches() -> dict[str, tuple[Replayed, Replayed]]:
    """Orders whose log does not arrive at them: id -> (the order, its replayed log)."""
    logs: dict[str, list[OrderEvent]] = {}
    for event in OrderEvent.objects.order_by("id"):
        logs.setdefault(event.order_id, []).append(event)
    wrong = {}
    for order in Order.objects.all():
        stored = Replayed(order.status, order.provider_payment_id, order.refunded_kopecks)
        replayed = events_replay(logs.get(order.pk, []))
        if replayed != stored:
            wrong[order.pk] = (stored, replayed)
    return wrong
