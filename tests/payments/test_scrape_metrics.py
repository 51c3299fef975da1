"""The gauges /metrics counts in the database at each scrape (payments/scrape_metrics.py)."""

from __future__ import annotations

import datetime
import io
import time
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import OperationalError
from django.utils import timezone

from payments import scrape_metrics, services
from payments.models import Device, Order, OrphanPayment
from tests.payments.conftest import SECRET, SHOP_ID, scan_parameters

# Committed rows: the scrape counts them in a thread of its own, on a connection of its own.
pytestmark = pytest.mark.django_db(transaction=True)


def scrape() -> httpx.Response:
    """GET /metrics on the metrics port of the application Gunicorn serves (coffee_payment/asgi.py)."""
    from coffee_payment.asgi import application

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application)) as client:
            return await client.get(f"http://127.0.0.1:{django_settings.METRICS_PORT}/metrics")

    return async_to_sync(get)()


def samples(text: bytes) -> dict[str, float]:
    lines = [line.rsplit(" ", 1) for line in text.decode().splitlines() if line and not line.startswith("#")]
    return {name: float(value) for name, value in lines}


def test_machines_are_counted_by_staffs_status_and_their_connection(device: Device, settings: Any) -> None:
    now = timezone.now()
    silent = now - datetime.timedelta(seconds=settings.DEVICE_OFFLINE_AFTER_SECONDS + settings.DEVICE_SEEN_INTERVAL_SECONDS)
    for number, status, token, seen in [(2, "online", True, now), (3, "online", True, silent), (4, "test", True, None),
                                        (5, "error", True, now), (6, "offline", False, None)]:
        other = Device.objects.create(device_uuid=f"machine-{number}", merchant=device.merchant, location="Hall",
                                      status=status, last_seen_at=seen)
        if token:
            services.device_credential_issue(device_id=other.pk)
    counted = samples(async_to_sync(scrape_metrics.database_metrics)())
    machines = {name: value for name, value in counted.items() if name.startswith("coffee_machines{") and value}
    assert machines == {
        'coffee_machines{connection="none",status="online"}': 1.0,  # machine-1: no token, staff's status alone
        'coffee_machines{connection="online",status="online"}': 1.0,
        'coffee_machines{connection="offline",status="online"}': 1.0,
        'coffee_machines{connection="offline",status="test"}': 1.0,  # a token, never called
        'coffee_machines{connection="online",status="error"}': 1.0,
        'coffee_machines{connection="none",status="offline"}': 1.0,
    }
    # Every series is there, zeros too: 4 statuses x 3 connections.
    assert len([name for name in counted if name.startswith("coffee_machines{")]) == 12
    assert counted["coffee_orders_make_overdue"] == 0.0


def test_a_scrape_whose_database_cannot_answer_leaves_the_counts_out_and_says_so(
    device: Device, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def down() -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(scrape_metrics, "_counts", down)
    assert samples(async_to_sync(scrape_metrics.database_metrics)()) == {"coffee_database_up": 0.0}
    assert [record.getMessage() for record in caplog.records] == ["/metrics without the database's gauges: connection refused"]
    response = scrape()
    assert response.status_code == 200 and b"coffee_machines" not in response.content
    assert b"coffee_payments_total" in response.content


def test_metrics_carry_the_database_counts(device: Device) -> None:
    response = scrape()
    assert response.status_code == 200
    assert samples(response.content)['coffee_machines{connection="none",status="online"}'] == 1.0


@pytest.mark.forged_status  # orders set in their states behind the services
def test_the_oldest_order_waiting_on_the_provider_is_reported_by_status(device: Device) -> None:
    for number, status, minutes in [(1, "pending", 40), (2, "pending", 5), (3, "refund_pending", 20), (4, "paid", 90)]:
        services.order_create(**scan_parameters(order_id=f"wait-{number}"))
        Order.objects.filter(pk=f"wait-{number}").update(
            status=status, updated_at=timezone.now() - datetime.timedelta(minutes=minutes))
    counted = samples(async_to_sync(scrape_metrics.database_metrics)())
    waits = {name: value for name, value in counted.items() if name.startswith("coffee_orders_provider_wait_oldest")}
    assert waits.keys() == {f'coffee_orders_provider_wait_oldest_seconds{{status="{status}"}}' for status in
                            ("pending", "capture_pending", "cancel_pending", "refund_pending")}
    # Seconds since the oldest change, at most the few seconds this test took more.
    assert 40 * 60 <= waits['coffee_orders_provider_wait_oldest_seconds{status="pending"}'] < 41 * 60
    assert 20 * 60 <= waits['coffee_orders_provider_wait_oldest_seconds{status="refund_pending"}'] < 21 * 60
    assert waits['coffee_orders_provider_wait_oldest_seconds{status="capture_pending"}'] == 0.0
    assert counted["coffee_database_up"] == 1.0


@pytest.mark.forged_status  # orders set in their states behind the services
def test_failed_refunds_are_counted_for_orders_and_orphan_payments(device: Device) -> None:
    for number in (1, 2):
        services.order_create(**scan_parameters(order_id=f"refund-{number}"))
    Order.objects.filter(pk="refund-1").update(status="refund_failed")
    OrphanPayment.objects.create(provider_payment_id="orphan-1", shop_id="shop", order_id="gone", amount_kopecks=100,
                                 reason="order expired", status="return_failed", provider_status="succeeded")
    OrphanPayment.objects.create(provider_payment_id="orphan-2", shop_id="shop", order_id="gone", amount_kopecks=100,
                                 reason="order expired", status="returned", provider_status="succeeded")
    counted = samples(async_to_sync(scrape_metrics.database_metrics)())
    assert counted['coffee_refunds_failed{source="order"}'] == 1.0
    assert counted['coffee_refunds_failed{source="orphan_payment"}'] == 1.0


def test_the_last_successful_reconciliation_is_the_last_run_that_exited_0(
    fake_server: Any, device: Device, settings: Any
) -> None:
    def last_success() -> float:
        return samples(async_to_sync(scrape_metrics.database_metrics)())[
            "coffee_reconciliation_last_success_timestamp_seconds"]

    assert last_success() == 0.0  # none recorded
    settings.PAYMENT_PROVIDER_URL = fake_server.api_url
    settings.PAYMENT_PROVIDER_SECRETS = {SHOP_ID: SECRET}
    before = time.time()
    call_command("reconcile_payments", stdout=io.StringIO())
    succeeded = last_success()
    assert before - 1 <= succeeded <= time.time()
    settings.PAYMENT_PROVIDER_URL = "http://127.0.0.1:9/v3"  # nothing listens there: the shop's listing fails
    with pytest.raises(CommandError):
        call_command("reconcile_payments", stdout=io.StringIO())
    assert last_success() == succeeded
