"""The vend window: a paid order the machine has not started within ORDER_MAKE_WINDOW_SECONDS of its
payment gets its money back; a started one not reported within ORDER_MAKE_TIMEOUT_SECONDS goes to
the staff.

`make_windows_check` runs both: in every server worker every ORDER_MAKE_WINDOW_CHECK_SECONDS (the
ASGI lifespan, coffee_payment/asgi.py) and in `manage.py reconcile_payments`. Any number of them
may run at once: each order is closed by one compare-and-set, which the machine's start races
(services.order_close_make_window, services.order_mark_make_pending). Why and what the customer
sees: docs/payments.md, "The vend window".
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import socket
from collections import Counter

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections, connections
from django.db.models import Q
from django.utils import timezone

from payments import events, services
from payments.errors import IllegalTransition, PaymentsError
from payments.models import MAKEABLE_STATUSES, EventCause, Order, OrderStatus

log = logging.getLogger(__name__)

S = OrderStatus
# Orders handled per check and kind: bounded, so a check ends quickly; what is left is due in the next.
BATCH = 100


def _windows_due(*, now: datetime.datetime) -> list[str]:
    cutoff = now - datetime.timedelta(seconds=settings.ORDER_MAKE_WINDOW_SECONDS)
    due = Order.objects.filter(status__in=MAKEABLE_STATUSES, paid_at__lte=cutoff).order_by("paid_at")
    return list(due.values_list("pk", flat=True)[:BATCH])


def make_overdue(*, now: datetime.datetime) -> Q:
    """Started (make_pending: its updated_at is the start) and not reported made or failed within
    ORDER_MAKE_TIMEOUT_SECONDS: the staff's to check (the admin's filter, the metric, the log line)."""
    started_before = now - datetime.timedelta(seconds=settings.ORDER_MAKE_TIMEOUT_SECONDS)
    return Q(status=S.MAKE_PENDING, updated_at__lte=started_before)


def _overdue(*, now: datetime.datetime) -> list[str]:
    overdue = Order.objects.filter(make_overdue(now=now), make_overdue_at__isnull=True)
    return list(overdue.values_list("pk", flat=True)[:BATCH])


async def make_windows_check(*, now: datetime.datetime | None = None) -> Counter[str]:
    """Close the due vend windows, returning the money at once (a refund or a release; what the
    provider does not answer, reconciliation repeats under the same key), and hand overdue started
    orders to the staff. Counts of what happened, for reconcile_payments' report."""
    now = now or timezone.now()
    outcomes: Counter[str] = Counter()
    for order_id in await sync_to_async(_windows_due)(now=now):
        try:
            await sync_to_async(services.order_close_make_window)(order_id=order_id, now=now)
        except IllegalTransition:
            # The machine started it first (or another check closed it): theirs stands.
            outcomes["window moved on"] += 1
            continue
        try:
            outcomes[f"window closed: {await services.order_money_settle(order_id=order_id)}"] += 1
        except PaymentsError as error:
            log.warning("order %r: money return left to reconciliation: %s %s", order_id, error.message,
                        getattr(error, "detail", ""))
            outcomes[f"error: {type(error).__name__}"] += 1
    for order_id in await sync_to_async(_overdue)(now=now):
        if await sync_to_async(services.order_flag_make_overdue)(order_id=order_id, now=now):
            outcomes["make overdue: handed to staff"] += 1
    return outcomes


def _connections_drop() -> None:
    """After a failed check: whatever connection it left is not worth keeping, nor its error."""
    try:
        connections.close_all()
    except (DatabaseError, InterfaceError):
        pass


class MakeWindowChecker:
    """Runs make_windows_check every ORDER_MAKE_WINDOW_CHECK_SECONDS on a server worker's event loop,
    from its lifespan startup to its shutdown. A failing check (the database down) is logged once per
    run of failures and tried again at the next tick; it never stops the worker."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Cancel the loop: an order closed but not yet settled keeps its recorded intent, which
        reconciliation finishes."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        # What the checks change is this worker's (the event log names its host, a pod, and process).
        with events.caused_by(EventCause.VEND_WINDOW, f"{socket.gethostname()} pid {os.getpid()}"):
            await self._checks()

    async def _checks(self) -> None:
        interval = settings.ORDER_MAKE_WINDOW_CHECK_SECONDS
        failing = False
        # Workers started together check at different moments.
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            try:
                await make_windows_check()
                # The check's sync calls ran in asgiref's one thread outside any request: its
                # connections are closed as after a request (a PostgreSQL one back to the pool).
                await sync_to_async(close_old_connections)()
                if failing:
                    log.warning("the vend window check works again")
                failing = False
            except (DatabaseError, InterfaceError, PaymentsError) as error:
                if not failing:
                    log.warning("the vend window check failed, retrying every %.1f s: %s", interval, str(error)[:200])
                failing = True
                await sync_to_async(_connections_drop)()
            except Exception:  # a bug here must not stop the worker's other work
                log.exception("the vend window check failed")
                await sync_to_async(_connections_drop)()
            await asyncio.sleep(interval)
