"""The order's event log: each status change and provider operation, its cause and time, appended in
the transaction of the change (docs/payments.md, "The event log").

The cause is a context variable that each entry point sets (`caused_by`, `request_caused`): the
customer's views, the webhook, the status poll, the machine API, the admin, reconciliation and the
vend window loop. Every write path under them is covered without a parameter threaded through every
service, and asgiref carries the variable into `sync_to_async` threads and `async_to_sync` loops.
What happened beyond the status change (a capture, a re-read and its answer) is set the same way
by the code that calls the provider (`operation`), or given to the write itself.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.module_loading import import_string

from payments.models import EventCause, EventOperation, OrderEvent

REFERENCE_MAX = OrderEvent._meta.get_field("reference").max_length
DETAIL_MAX = OrderEvent._meta.get_field("detail").max_length


@dataclasses.dataclass(frozen=True)
class Cause:
    kind: str
    reference: str = ""
    user_id: int | None = None


@dataclasses.dataclass(frozen=True)
class Happening:
    """What an event row says beyond the status change."""

    operation: str = EventOperation.STATUS
    payment_id: str = ""
    refund_id: str = ""
    amount_kopecks: int | None = None
    refunded_kopecks: int = 0
    detail: str = ""


_cause: contextvars.ContextVar[Cause] = contextvars.ContextVar("order_event_cause",
                                                               default=Cause(EventCause.UNRECORDED))
_happening: contextvars.ContextVar[Happening | None] = contextvars.ContextVar("order_event_happening", default=None)


@contextmanager
def caused_by(kind: str, reference: str = "", *, user_id: int | None = None) -> Iterator[None]:
    """Every event written inside names this cause (an entry point's)."""
    token = _cause.set(Cause(kind, reference[:REFERENCE_MAX], user_id))
    try:
        yield
    finally:
        _cause.reset(token)


def request_id() -> str:
    """The X-Request-ID of the request being served (settings.REQUEST_ID_CALLABLE), "" outside one."""
    return import_string(settings.REQUEST_ID_CALLABLE)() or ""


View = Callable[..., Awaitable[HttpResponse]]


def request_caused(kind: str) -> Callable[[View], View]:
    """An async view whose writes are caused by its request (`kind`, the request's id)."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        async def caused(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            with caused_by(kind, request_id()):
                return await view(request, *args, **kwargs)

        return caused

    return decorate


@contextmanager
def operation(name: str, **fields: Any) -> Iterator[None]:
    """Events written inside are this provider operation (`fields`: Happening's), unless the write
    names its own."""
    token = _happening.set(Happening(operation=name, **fields))
    try:
        yield
    finally:
        _happening.reset(token)


def operation_current() -> str | None:
    happening = _happening.get()
    return happening.operation if happening is not None else None


def event_record(*, order_id: str, status_from: str, status_to: str, happening: Happening | None = None,
                 **fields: Any) -> OrderEvent:
    """Append the order's event. Inside the transaction that makes the change, so that both are
    written or neither: outside one it refuses (RuntimeError, a bug). `happening`: what happened,
    else the operation set around the call, else a status change; `fields` fill what it leaves empty."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError(f"the event of order {order_id!r} must be written in the transaction of its change")
    happened = dataclasses.asdict(happening or _happening.get() or Happening())
    happened.update({name: value for name, value in fields.items() if not happened.get(name)})
    happened["detail"] = str(happened["detail"])[:DETAIL_MAX]
    cause = _cause.get()
    return OrderEvent.objects.create(order_id=order_id, at=timezone.now(), status_from=status_from,
                                     status_to=status_to, cause=cause.kind, reference=cause.reference,
                                     user_id=cause.user_id, **happened)
