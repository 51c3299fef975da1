"""Reconciliation: lost notifications, stale holds, interrupted provider calls, purging, two runs at once."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from devtools.fake_provider import ApiError, FakeProvider
from devtools.postgres import is_postgres, with_database
from devtools.processes import REPO, base_environ
from payments import orphans, provider, reconciliation, services
from payments.models import Merchant, Order, OrderEvent, OrphanPayment
from payments.provider import Notification
from tests.payments.conftest import SECRET, SHOP_ID, scan_parameters

pytestmark = pytest.mark.django_db(transaction=True)


def later(minutes: float) -> datetime.datetime:
    return timezone.now() + datetime.timedelta(minutes=minutes)


async def started(fake: FakeProvider, order_id: str, *, two_stage: bool = False) -> str:
    """A payment the customer started; the provider's id."""
    await Merchant.objects.aupdate(two_stage_payments=two_stage)
    await sync_to_async(services.order_create)(**scan_parameters(order_id=order_id))
    await services.order_payment_start(order_id=order_id, return_url="http://testserver/back")
    return (await Order.objects.aget(pk=order_id)).provider_payment_id


async def status(order_id: str) -> str:
    return (await Order.objects.aget(pk=order_id)).status


async def test_a_payment_whose_notification_was_lost_is_paid_by_reconciliation(
    fake: FakeProvider, device: Any, settings: Any
) -> None:
    """The customer paid while the webhook could not be delivered (server or database down)."""
    settings.ORDER_RECONCILE_AFTER_MINUTES = 10
    payment_id = await started(fake, "lost-1")
    fake.settle(payment_id, "succeeded")  # its notification never arrives
    assert await reconciliation.orders_reconcile(now=later(9)) == {}  # too young to re-read
    assert fake.calls[f"GET /payments/{payment_id}"] == 0
    assert await reconciliation.orders_reconcile(now=later(11)) == {"paid": 1}
    assert await status("lost-1") == "paid"
    # Idempotent: the order is settled, nothing is due any more.
    assert await reconciliation.orders_reconcile(now=later(30)) == {}
    assert fake.calls[f"GET /payments/{payment_id}"] == 1


async def test_a_hold_past_its_age_is_released(fake: FakeProvider, device: Any, settings: Any) -> None:
    settings.ORDER_HOLD_MAX_MINUTES = 30
    payment_id = await started(fake, "hold-1", two_stage=True)
    fake.settle(payment_id, "waiting_for_capture")
    assert await reconciliation.orders_reconcile(now=later(11)) == {"held": 1}
    await sync_to_async(services.order_mark_make_pending)(order_id="hold-1")
    # The machine never reported the drink: after the hold's age the customer is not charged.
    assert await reconciliation.orders_reconcile(now=later(29)) == {}
    assert await reconciliation.orders_reconcile(now=later(31)) == {"released": 1}
    assert fake.payments[payment_id].status == "canceled"
    assert fake.calls[f"POST /payments/{payment_id}/capture"] == 0


async def test_an_order_a_machine_moves_while_it_is_reconciled_is_left_to_the_machine(
    fake: FakeProvider, device: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report racing the run is not a failed run: the CronJob stays green, the order is the machine's."""
    settings.ORDER_HOLD_MAX_MINUTES = 30
    payment_id = await started(fake, "race-1", two_stage=True)
    fake.settle(payment_id, "waiting_for_capture")
    assert await reconciliation.orders_reconcile(now=later(11)) == {"held": 1}
    release = services.order_mark_hold_release

    def machine_reports_first(**kwargs: Any) -> Order:
        # Between the run's read and its write, the machine reports the drink failed.
        services.order_mark_make_failed(order_id="race-1")
        return release(**kwargs)

    monkeypatch.setattr(services, "order_mark_hold_release", machine_reports_first)
    assert await reconciliation.orders_reconcile(now=later(31)) == {"moved on": 1}
    assert await status("race-1") == "make_failed"


async def test_a_failed_drink_reported_without_the_provider_is_refunded_later(fake: FakeProvider, device: Any) -> None:
    payment_id = await started(fake, "fail-1")
    fake.settle(payment_id, "succeeded")
    await reconciliation.orders_reconcile(now=later(11))
    for mark in (services.order_mark_make_pending, services.order_mark_make_failed):
        await sync_to_async(mark)(order_id="fail-1")
    assert await reconciliation.orders_reconcile(now=later(22)) == {"refunded": 1}
    (refund,) = fake.refunds.values()
    assert (refund.payment_id, refund.amount * 100) == (payment_id, 15900)


async def failed_drink(fake: FakeProvider, order_id: str) -> str:
    """A paid drink the machine could not make, its refund due; the payment's id."""
    payment_id = await started(fake, order_id)
    fake.settle(payment_id, "succeeded")
    await reconciliation.orders_reconcile(now=later(11))
    for mark in (services.order_mark_make_pending, services.order_mark_make_failed):
        await sync_to_async(mark)(order_id=order_id)
    return payment_id


async def test_a_refund_the_provider_refuses_is_left_to_the_staff(
    fake: FakeProvider, device: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The staff refunded part of the payment from the provider's dashboard, so the whole price can
    no longer be refunded, and the same request would be refused on every run: refund_failed (money
    the staff must return), not refund_pending forever."""
    payment_id = await failed_drink(fake, "refused-1")
    fake.payments[payment_id].refunded = Decimal("50.00")
    assert await reconciliation.orders_reconcile(now=later(22)) == {"refund_failed": 1}
    order = await Order.objects.aget(pk="refused-1")
    assert (order.status, order.refund_status, fake.refunds) == ("refund_failed", "refused", {})
    assert "the provider refused the refund of order 'refused-1' (HTTP 400)" in caplog.text
    assert await reconciliation.orders_reconcile(now=later(33)) == {}


async def test_a_refund_refused_for_our_credentials_stays_due(fake: FakeProvider, device: Any, settings: Any) -> None:
    """401: the shop's secret key is wrong, the operator's to fix; the refund happens on the run after."""
    await failed_drink(fake, "keys-1")
    settings.PAYMENT_PROVIDER_SECRETS = {SHOP_ID: "not-the-secret"}
    assert await reconciliation.orders_reconcile(now=later(22)) == {"error: ProviderRejected": 1,
                                                                    "error: listing ProviderRejected": 1}
    assert await status("keys-1") == "refund_pending"
    settings.PAYMENT_PROVIDER_SECRETS = {SHOP_ID: SECRET}
    assert await reconciliation.orders_reconcile(now=later(33)) == {"refunded": 1}


async def test_a_provider_down_during_a_run_is_retried_by_the_next_run(fake: FakeProvider, device: Any) -> None:
    payment_id = await started(fake, "down-1")
    fake.settle(payment_id, "succeeded")
    fake.fail = "error"
    assert await reconciliation.orders_reconcile(now=later(11)) == {"error: ProviderUnavailable": 1,
                                                                    "error: listing ProviderUnavailable": 1}
    fake.fail = "none"
    assert await reconciliation.orders_reconcile(now=later(15)) == {}  # claimed 4 minutes ago
    assert await reconciliation.orders_reconcile(now=later(22)) == {"paid": 1}


def test_orders_that_never_had_a_payment_are_purged_with_their_events_after_the_retention_period(
    device: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.ORDER_RETENTION_DAYS = 30
    for order_id in ("unpaid", "declined", "paid", "recent", "orphaned", "unpaid-2"):
        services.order_create(**scan_parameters(order_id=order_id))
    # Declined at the provider: no money, but a provider payment, whose record stays.
    services.order_mark_pending(order_id="declined", provider_payment_id="pay-declined")
    services.order_mark_not_paid(order_id="declined")
    services.order_mark_pending(order_id="paid", provider_payment_id="pay-paid")
    services.order_mark_paid(order_id="paid")
    # Still created, but a payment naming it was returned: the order is the trace's other half.
    OrphanPayment.objects.create(provider_payment_id="pay-orphan", shop_id=SHOP_ID, order_id="orphaned",
                                 amount_kopecks=15900, reason="expired", provider_status="succeeded")
    Order.objects.exclude(pk="recent").update(expires_at=timezone.now() - datetime.timedelta(days=31))
    monkeypatch.setattr(reconciliation, "PURGE_BATCH", 1)  # one order per step
    assert reconciliation.orders_purge(now=timezone.now()) == 2
    assert sorted(Order.objects.values_list("pk", flat=True)) == ["declined", "orphaned", "paid", "recent"]
    assert set(OrderEvent.objects.values_list("order_id", flat=True)) == {"declined", "orphaned", "paid", "recent"}


def test_the_command_reports_what_it_did_and_fails_when_the_provider_did_not_answer(
    fake_server: Any, device: Any, settings: Any
) -> None:
    settings.PAYMENT_PROVIDER_URL = fake_server.api_url
    settings.PAYMENT_PROVIDER_SECRETS = {SHOP_ID: SECRET}
    services.order_create(**scan_parameters(order_id="cmd-1"))
    services.order_mark_pending(order_id="cmd-1", provider_payment_id="not-at-the-provider")
    Order.objects.update(updated_at=timezone.now() - datetime.timedelta(hours=1))
    out = _call("reconcile_payments")
    assert out == "ignored 1\n"
    assert _call("reconcile_payments") == "nothing due\n"
    services.order_create(**scan_parameters(order_id="cmd-2"))
    services.order_mark_pending(order_id="cmd-2", provider_payment_id="pay-2")
    Order.objects.filter(pk="cmd-2").update(updated_at=timezone.now() - datetime.timedelta(hours=1))
    settings.PAYMENT_PROVIDER_URL = "http://127.0.0.1:9/v3"  # nothing listens there
    # The order's re-read and the listing of the shop's payments.
    with pytest.raises(CommandError, match="2 order\\(s\\) or payment lists could not be reconciled"):
        _call("reconcile_payments")
    with pytest.raises(CommandError, match="argument --limit: '0' is not a whole number of orders"):
        _call("reconcile_payments", "--limit", "0")


def _call(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# Two runs at once (two pods) ------------------------------------------------------------------

PAID_ORDERS, HELD_ORDERS = 24, 8


async def _command(environ: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "manage.py", "reconcile_payments", "--batch", "3", cwd=REPO, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode or 0, out.decode(), err.decode()


@pytest.mark.skipif(not is_postgres(os.environ.get("DATABASE_URL", "")), reason="two processes share PostgreSQL only")
async def test_two_runs_at_once_handle_every_order_exactly_once(fake: FakeProvider, fake_server: Any, device: Any,
                                                                   tmp_path: Path) -> None:
    """Two `manage.py reconcile_payments` processes on one PostgreSQL database, at the same time:
    every lost payment is re-read once and every due capture is made once, between them."""
    payments = {}
    for number in range(PAID_ORDERS):
        payments[f"paid-{number}"] = await started(fake, f"paid-{number}")
        fake.settle(payments[f"paid-{number}"], "succeeded")
    for number in range(HELD_ORDERS):
        order_id = f"made-{number}"
        payments[order_id] = await started(fake, order_id, two_stage=True)
        fake.settle(payments[order_id], "waiting_for_capture")
        # Held, made, and the capture interrupted (a crash after recording the intent).
        await sync_to_async(services.order_mark_held)(order_id=order_id, hold_expires_at=later(60))
        await sync_to_async(services.order_mark_make_pending)(order_id=order_id)
        await sync_to_async(services.order_mark_successful)(order_id=order_id)
    await Order.objects.aupdate(updated_at=timezone.now() - datetime.timedelta(hours=1))
    fake.latency = 0.1  # each provider call takes a while: the two runs overlap
    fake.calls.clear()
    database = with_database(os.environ["DATABASE_URL"], connection.settings_dict["NAME"])
    environ = base_environ(tmp_path, DATABASE_URL=database, PAYMENT_PROVIDER_URL=fake_server.api_url,
                           PAYMENT_PROVIDER_SECRETS=f"{SHOP_ID}:{SECRET}")
    runs = await asyncio.gather(_command(environ), _command(environ))
    assert [code for code, _, _ in runs] == [0, 0], runs
    counts = [dict(line.rsplit(" ", 1) for line in out.splitlines() if line != "nothing due") for _, out, _ in runs]
    assert sum(int(c.get("paid", 0)) for c in counts) == PAID_ORDERS, counts
    assert sum(int(c.get("successful", 0)) for c in counts) == HELD_ORDERS, counts
    # Both runs worked, and not one order twice.
    assert all(counts), counts
    for order_id, payment_id in payments.items():
        expected_status = "paid" if order_id.startswith("paid") else "successful"
        assert await status(order_id) == expected_status
        if expected_status == "paid":
            assert fake.calls[f"GET /payments/{payment_id}"] == 1, order_id
        else:
            assert fake.calls[f"POST /payments/{payment_id}/capture"] == 1, order_id


# Orphan payments: the provider has them, their order never recorded them ---------------------------


def old_enough(settings: Any, minutes: float = 0) -> datetime.datetime:
    """A run's time at which payments made now are listed: a request that made one has ended."""
    return timezone.now() + datetime.timedelta(seconds=settings.REQUEST_TIMEOUT + 6, minutes=minutes)


async def orphan(fake: FakeProvider, order_id: str, *, status: str = "succeeded", two_stage: bool = False,
                 key: str | None = None) -> str:
    """A payment of the order that the provider made and settled, whose answer never reached the
    order (the worker died first); its id. `key`: another Idempotence-Key than the order's."""
    if not await Order.objects.filter(pk=order_id).aexists():
        await Merchant.objects.aupdate(two_stage_payments=two_stage)
        await sync_to_async(services.order_create)(**scan_parameters(order_id=order_id))
    body = {"amount": {"value": "159.00", "currency": "RUB"}, "capture": not two_stage,
            "confirmation": {"type": "redirect", "return_url": "http://testserver/back"},
            "description": "Cappuccino", "metadata": {"order_id": order_id}}
    created = fake._once(SHOP_ID, key or provider.idempotence_key(order_id), "POST /payments",
                         json.dumps(body).encode(), lambda: fake._create(SHOP_ID, json.dumps(body).encode(),
                                                                         base_url="http://fake"))
    fake.settle(created["id"], status)
    return created["id"]


async def test_a_payment_its_order_never_recorded_is_attached_and_applied(
    fake: FakeProvider, device: Any, settings: Any
) -> None:
    payment_id = await orphan(fake, "orphan-1")
    # Too young: the request that created it may still be storing it.
    assert await reconciliation.orders_reconcile(now=timezone.now()) == {}
    assert await status("orphan-1") == "created"
    assert await reconciliation.orders_reconcile(now=old_enough(settings)) == {"orphan attached: paid": 1}
    order = await Order.objects.aget(pk="orphan-1")
    assert (order.status, order.provider_payment_id) == ("paid", payment_id)
    assert await reconciliation.orders_reconcile(now=old_enough(settings)) == {}  # the order knows it now
    assert fake.refunds == {}


async def test_a_pending_payment_its_order_can_take_is_attached_and_left_to_the_customer(
    fake: FakeProvider, device: Any, settings: Any
) -> None:
    payment_id = await orphan(fake, "orphan-2", status="canceled")
    fake.payments[payment_id].status = "pending"
    assert await reconciliation.orders_reconcile(now=old_enough(settings)) == {"orphan attached: pending": 1}
    order = await Order.objects.aget(pk="orphan-2")
    assert (order.status, order.provider_payment_id) == ("pending", payment_id)


async def test_an_orphan_its_order_can_no_longer_take_is_refunded_once(
    fake: FakeProvider, device: Any, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Staff marked the unpaid order failed; the customer's money went to the provider meanwhile:
    refunded under the payment's own key, recorded, and never attached by a late notification."""
    payment_id = await orphan(fake, "orphan-3")
    await sync_to_async(services.order_mark_failed)(order_id="orphan-3")
    assert await reconciliation.orders_reconcile(now=old_enough(settings)) == {"orphan refunded": 1}
    (refund,) = fake.refunds.values()
    assert (refund.payment_id, refund.amount) == (payment_id, Decimal("159.00"))
    assert (SHOP_ID, provider.payment_idempotence_key(payment_id, "refund")) in fake.keys
    record = await OrphanPayment.objects.aget(provider_payment_id=payment_id)
    assert (record.status, record.order_id, record.amount_kopecks, record.refund_id, record.reason) == (
        "returned", "orphan-3", 15900, refund.id, "order 'orphan-3' is failed")
    assert f"payment {payment_id} (15900 kopecks, succeeded) names order 'orphan-3' is failed" in caplog.text
    assert await reconciliation.orders_reconcile(now=old_enough(settings, minutes=5)) == {}
    told = Notification(event="payment.succeeded", payment_id=payment_id, order_id_hint="orphan-3")
    assert await services.payment_notification_apply(notification=told) == "ignored: payment is being returned"
    assert await status("orphan-3") == "failed" and len(fake.refunds) == 1


async def test_an_orphan_hold_of_an_expired_order_is_released(fake: FakeProvider, device: Any, settings: Any) -> None:
    payment_id = await orphan(fake, "orphan-4", status="waiting_for_capture", two_stage=True)
    expired = old_enough(settings, minutes=settings.ORDER_EXPIRY_MINUTES)
    assert await reconciliation.orders_reconcile(now=expired) == {"orphan released": 1}
    assert fake.payments[payment_id].status == "canceled"
    assert (SHOP_ID, provider.payment_idempotence_key(payment_id, "cancel")) in fake.keys
    assert await status("orphan-4") == "created"


async def test_a_second_payment_of_a_paid_order_is_refunded(fake: FakeProvider, device: Any, settings: Any) -> None:
    first = await started(fake, "orphan-5")
    fake.settle(first, "succeeded")
    assert await reconciliation.orders_reconcile(now=later(11)) == {"paid": 1}
    second = await orphan(fake, "orphan-5", key="another-key")
    assert await reconciliation.orders_reconcile(now=later(12)) == {"orphan refunded": 1}
    assert [refund.payment_id for refund in fake.refunds.values()] == [second]
    assert (await OrphanPayment.objects.aget()).reason == f"order 'orphan-5' has its own payment {first}"
    assert await status("orphan-5") == "paid"


async def test_a_return_the_provider_missed_is_repeated_and_one_it_refuses_is_left_to_the_staff(
    fake: FakeProvider, device: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    payments = []
    for order_id in ("orphan-6", "orphan-7"):
        payments.append(await orphan(fake, order_id))
        await sync_to_async(services.order_mark_failed)(order_id=order_id)

    def refunds_down(shop_id: str, body: bytes) -> Any:
        raise ApiError(500, "internal_server_error", "refunds are down")

    with monkeypatch.context() as down:
        down.setattr(fake, "_refund", refunds_down)
        assert await reconciliation.orders_reconcile(now=old_enough(settings)) == {"error: ProviderUnavailable": 2}
    assert [r.status async for r in OrphanPayment.objects.order_by("order_id")] == ["return_pending"] * 2
    # Meanwhile the staff refunded part of the first from the provider's dashboard: the whole amount
    # can no longer be refunded, on any run.
    fake.payments[payments[0]].refunded = Decimal("10.00")
    assert await reconciliation.orders_reconcile(now=old_enough(settings, minutes=5)) == {
        "orphan return_failed": 1, "orphan refunded": 1}
    assert [refund.payment_id for refund in fake.refunds.values()] == [payments[1]]
    assert [r.status async for r in OrphanPayment.objects.order_by("order_id")] == ["return_failed", "returned"]
    assert f"orphan payment {payments[0]}: the provider refused to return its money (refund refused, HTTP 400)" \
        in caplog.text
    assert await reconciliation.orders_reconcile(now=old_enough(settings, minutes=10)) == {}


async def test_the_listing_pages_with_its_cursor_and_is_bounded(
    fake: FakeProvider, device: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lost = await orphan(fake, "orphan-9")  # the oldest: on the last page
    for number in range(5):
        fake.settle(await started(fake, f"known-{number}"), "succeeded")
    monkeypatch.setattr(provider, "LIST_LIMIT", 2)
    monkeypatch.setattr(orphans, "PAGES_MAX", 2)
    assert await reconciliation.orders_reconcile(now=old_enough(settings)) == {}
    assert fake.calls["GET /payments"] == 2 and "listed 2 pages of payments created since" in caplog.text
    monkeypatch.setattr(orphans, "PAGES_MAX", 10)
    assert await reconciliation.orders_reconcile(now=old_enough(settings)) == {"orphan attached: paid": 1}
    assert fake.calls["GET /payments"] == 2 + 3
    assert (await Order.objects.aget(pk="orphan-9")).provider_payment_id == lost
