"""The vend window: paid orders not started in time get their money back; started ones not reported
in time go to the staff (payments/vend_window.py)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import threading
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import OperationalError, connection
from django.utils import timezone

from devtools.fake_provider import FakeProvider
from payments import services, vend_window
from payments.errors import IllegalTransition
from payments.models import Order, OrderEvent
from payments.scrape_metrics import database_metrics
from tests.payments.conftest import paid_order

pytestmark = pytest.mark.django_db(transaction=True)


def ago(seconds: float) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(seconds=seconds)


async def status(order_id: str) -> str:
    return (await Order.objects.aget(pk=order_id)).status


@pytest.mark.parametrize(("two_stage", "returned"), [(False, "refunded"), (True, "released")])
async def test_a_paid_order_not_started_in_its_window_gets_its_money_back(
    fake: FakeProvider, order: Order, settings: Any, two_stage: bool, returned: str
) -> None:
    payment_id = await paid_order(fake, order, two_stage=two_stage)
    assert await vend_window.make_windows_check() == {}  # within its window: nothing to do
    await Order.objects.filter(pk=order.pk).aupdate(paid_at=ago(settings.ORDER_MAKE_WINDOW_SECONDS))
    assert await vend_window.make_windows_check() == {f"window closed: {returned}": 1}
    closed = await Order.objects.aget(pk=order.pk)
    assert closed.status == returned and closed.make_window_closed_at is not None
    if two_stage:
        assert fake.payments[payment_id].status == "canceled"
    else:
        assert [refund.payment_id for refund in fake.refunds.values()] == [payment_id]
    assert await vend_window.make_windows_check() == {}


@pytest.mark.forged_status
async def test_an_order_started_or_paid_before_the_window_existed_is_left_alone(
    fake: FakeProvider, order: Order, settings: Any
) -> None:
    await paid_order(fake, order, two_stage=False)
    await sync_to_async(services.order_mark_make_pending)(order_id=order.pk)
    await Order.objects.filter(pk=order.pk).aupdate(paid_at=ago(settings.ORDER_MAKE_WINDOW_SECONDS * 2))
    assert await vend_window.make_windows_check() == {}
    await Order.objects.filter(pk=order.pk).aupdate(status="paid", paid_at=None)
    assert await vend_window.make_windows_check() == {}
    assert await status(order.pk) == "paid" and not fake.refunds


async def test_a_provider_that_does_not_answer_leaves_the_intent_for_reconciliation(
    fake: FakeProvider, order: Order, settings: Any
) -> None:
    await paid_order(fake, order, two_stage=False)
    await Order.objects.filter(pk=order.pk).aupdate(paid_at=ago(settings.ORDER_MAKE_WINDOW_SECONDS))
    fake.fail = "error"
    assert await vend_window.make_windows_check() == {"error: ProviderUnavailable": 1}
    assert await status(order.pk) == "refund_pending"  # closed: the machine can no longer start it
    fake.fail = "none"
    await Order.objects.filter(pk=order.pk).aupdate(updated_at=ago(settings.ORDER_RECONCILE_AFTER_MINUTES * 60))
    out = StringIO()
    await asyncio.to_thread(call_command, "reconcile_payments", stdout=out)
    assert "refunded 1" in out.getvalue() and await status(order.pk) == "refunded"


async def test_reconcile_payments_closes_due_windows_too(fake: FakeProvider, order: Order, settings: Any) -> None:
    await paid_order(fake, order, two_stage=True)
    await Order.objects.filter(pk=order.pk).aupdate(paid_at=ago(settings.ORDER_MAKE_WINDOW_SECONDS + 1))
    out = StringIO()
    await asyncio.to_thread(call_command, "reconcile_payments", stdout=out)
    assert out.getvalue().splitlines() == ["window closed: released 1"]


def race(*contenders: Callable[[], Any]) -> list[bool]:
    """Run the contenders at once, each in a thread of its own: which of them did not raise
    IllegalTransition."""
    barrier = threading.Barrier(len(contenders))
    won = [False] * len(contenders)

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            contenders[index]()
            won[index] = True
        except IllegalTransition:
            pass
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(contenders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return won


# The in-memory SQLite database of the SQLite pass shares one cache between threads, whose table
# locks fail at once instead of waiting; SQLite serialises its writers anyway.
@pytest.mark.skipif(connection.vendor != "postgresql", reason="threads race on PostgreSQL only")
@pytest.mark.parametrize("two_stage", [False, True])
@pytest.mark.forged_status
def test_a_late_start_and_the_windows_closing_race_and_exactly_one_wins(order: Order, settings: Any,
                                                                         two_stage: bool) -> None:
    """At the window's last moment, the machine's start (still in time) and the closing (already due)
    at once, in threads of their own, twenty times: one of them wins each time, never both."""
    window = datetime.timedelta(seconds=settings.ORDER_MAKE_WINDOW_SECONDS)
    services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1")
    for _ in range(20):  # bounded
        paid_at = timezone.now()
        Order.objects.filter(pk=order.pk).update(status="held" if two_stage else "paid", two_stage=two_stage,
                                                 paid_at=paid_at, hold_expires_at=paid_at + 2 * window)
        deadline = paid_at + window
        start = lambda: services.order_mark_make_pending(order_id=order.pk, now=deadline - datetime.timedelta(microseconds=1))  # noqa: E731
        close = lambda: services.order_close_make_window(order_id=order.pk, now=deadline)  # noqa: E731
        won = race(start, close)
        assert won.count(True) == 1, won
        stored = Order.objects.get(pk=order.pk)
        assert stored.status == ("make_pending" if won[0] else "cancel_pending" if two_stage else "refund_pending")
        assert (stored.make_window_closed_at is not None) == won[1]
        Order.objects.filter(pk=order.pk).update(make_window_closed_at=None)


async def test_a_started_order_not_reported_in_time_goes_to_the_staff_once(
    fake: FakeProvider, order: Order, settings: Any, caplog: pytest.LogCaptureFixture, admin_client: Any
) -> None:
    """No money moves (the drink may have been poured): one ERROR line, the metric, the admin filter."""
    await paid_order(fake, order, two_stage=False)
    await sync_to_async(services.order_mark_make_pending)(order_id=order.pk)
    assert b"coffee_orders_make_overdue 0.0" in await database_metrics()
    await Order.objects.filter(pk=order.pk).aupdate(updated_at=ago(settings.ORDER_MAKE_TIMEOUT_SECONDS))
    with caplog.at_level(logging.ERROR, logger="payments.services"):
        assert await vend_window.make_windows_check() == {"make overdue: handed to staff": 1}
        assert await vend_window.make_windows_check() == {}
        # A second worker's check that found it due at the same moment: its compare-and-set loses.
        assert await sync_to_async(services.order_flag_make_overdue)(order_id=order.pk) is False
    lines = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert lines == [f"order {order.pk!r} was started but not reported made or failed within "
                     f"ORDER_MAKE_TIMEOUT_SECONDS={settings.ORDER_MAKE_TIMEOUT_SECONDS}: the staff check the machine "
                     "and mark it made by staff or could not be made"]
    stored = await Order.objects.aget(pk=order.pk)
    assert (stored.status, stored.make_overdue_at is not None, fake.refunds) == ("make_pending", True, {})
    assert b"coffee_orders_make_overdue 1.0" in await database_metrics()
    listed = await sync_to_async(admin_client.get)("/admin/payments/order/?make_overdue=yes")
    assert listed.status_code == 200 and order.pk in listed.content.decode()
    others = await sync_to_async(admin_client.get)("/admin/payments/order/?make_overdue=yes&status__exact=paid")
    assert order.pk not in others.content.decode()


async def test_the_workers_checker_closes_windows_without_being_asked(
    fake: FakeProvider, order: Order, settings: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lifespan's loop: a due window closed within a tick, a failing check logged once, stopped."""
    settings.ORDER_MAKE_WINDOW_CHECK_SECONDS = 0.05
    await paid_order(fake, order, two_stage=False)
    await Order.objects.filter(pk=order.pk).aupdate(paid_at=ago(settings.ORDER_MAKE_WINDOW_SECONDS))
    checker = vend_window.MakeWindowChecker()
    await checker.start()
    try:
        for _ in range(200):  # bounded: 10 s
            if await status(order.pk) == "refunded":
                break
            await asyncio.sleep(0.05)
        assert await status(order.pk) == "refunded"
        # The order's log names the worker's check as the cause of the closing and of the refund.
        worker = f"{socket.gethostname()} pid {os.getpid()}"
        assert [(e.operation, e.status_to) async for e in OrderEvent.objects.filter(
            order_id=order.pk, cause="vend_window", reference=worker).order_by("id")] == [
            ("window_close", "refund_pending"), ("refund", "refunded")]
        calls = 0

        async def database_down(**kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            raise OperationalError("connection refused")

        monkeypatch.setattr(vend_window, "make_windows_check", database_down)
        with caplog.at_level(logging.WARNING, logger="payments.vend_window"):
            for _ in range(200):  # bounded: 10 s
                if calls >= 3:
                    break
                await asyncio.sleep(0.05)
        warnings = [r.getMessage() for r in caplog.records if r.name == "payments.vend_window"]
        assert calls >= 3 and len(warnings) == 1 and "the vend window check failed, retrying" in warnings[0]
    finally:
        await checker.stop()
    assert checker._task is None

