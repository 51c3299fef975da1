"""The gauges /metrics counts in the database at each scrape (payments/scrape_metrics.py)."""

from __future__ import annotations

import datetime
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.db import OperationalError
from django.utils import timezone

from payments import scrape_metrics, services
from payments.models import Device

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


def test_a_scrape_whose_database_cannot_answer_leaves_the_counts_out(
    device: Device, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def down() -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(scrape_metrics, "_counts", down)
    assert async_to_sync(scrape_metrics.database_metrics)() == b""
    assert [record.getMessage() for record in caplog.records] == ["/metrics without the database's gauges: connection refused"]
    response = scrape()
    assert response.status_code == 200 and b"coffee_machines" not in response.content
    assert b"coffee_payments_total" in response.content


def test_metrics_carry_the_database_counts(device: Device) -> None:
    response = scrape()
    assert response.status_code == 200
    assert samples(response.content)['coffee_machines{connection="none",status="online"}'] == 1.0
