"""The order's event log: every change with its cause, from the entry point that made it, in order, in
the transaction of the change; nothing changes or deletes a row (payments/events.py)."""

from __future__ import annotations

import datetime
import json
import logging
import re
from io import StringIO
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from coffee_payment.asgi import django_application
from coffee_payment.request_id import RequestIdMiddleware
from devtools.fake_provider import FakeProvider
from payments import events, services
from payments.errors import IllegalTransition, RecordsPermanent
from payments.models import DeviceCredential, Order, OrderEvent
from tests.payments.conftest import paid_order, scan_parameters
from tests.payments.test_admin import paid_at_the_fake, payment_at_the_fake

pytestmark = pytest.mark.django_db(transaction=True)

ORDER_ID = scan_parameters()["order_id"]
QR = f"/v1/pay?deviceUuid=machine-1&orderId={ORDER_ID}&drinkNo=2&size=2"


def log_of(order_id: str = ORDER_ID, *fields: str) -> list[tuple[Any, ...]]:
    fields = fields or ("operation", "status_from", "status_to", "cause", "reference")
    return list(OrderEvent.objects.filter(order_id=order_id).order_by("id").values_list(*fields))


def client() -> httpx.AsyncClient:
    """The project's own request path (X-Request-ID from its middleware), in-process."""
    app = RequestIdMiddleware(django_application)
    # https: the CSRF cookie is a Secure one.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://testserver",
                             headers={"Origin": "https://testserver"})


async def test_the_customers_requests_and_the_notification_are_the_causes(fake: FakeProvider, device: Any) -> None:
    async with client() as http:
        page = await http.get(QR, headers={"X-Request-ID": "scan-1"})
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert page.status_code == 200 and token is not None
        paying = await http.post(f"/v1/orders/{ORDER_ID}/payment", data={"csrfmiddlewaretoken": token.group(1)},
                                 headers={"X-Request-ID": "pay-1"})
        assert paying.status_code == 303
        payment_id = next(iter(fake.payments))
        fake.settle(payment_id, "succeeded")
        body = {"type": "notification", "event": "payment.succeeded", "object": {"id": payment_id}}
        told = await http.post("/v1/payments/webhook", content=json.dumps(body),
                               headers={"Content-Type": "application/json"})
        assert told.json() == {"status": "paid"}
    assert await sync_to_async(log_of)(ORDER_ID, "operation", "status_from", "status_to", "cause", "reference",
                                       "payment_id", "detail") == [
        ("scan", "", "created", "customer", "scan-1", "", ""),
        ("payment_create", "created", "pending", "customer", "pay-1", payment_id, "payment pending"),
        ("payment_read", "pending", "paid", "notification", f"payment.succeeded {payment_id}", payment_id,
         "payment succeeded"),
    ]
    times = await sync_to_async(log_of)(ORDER_ID, "at")
    assert times == sorted(times) and times[0][0] <= timezone.now()


async def test_the_status_polls_reread_is_its_cause(fake: FakeProvider, order: Order) -> None:
    await services.order_payment_start(order_id=order.pk, return_url="http://testserver/back")
    fake.settle(next(iter(fake.payments)), "succeeded")  # its notification is lost: not sent
    async with client() as http:
        polled = await http.get(f"/v1/order-status/{order.pk}", headers={"X-Request-ID": "poll-7"})
    assert polled.json()["status"] == "paid"
    assert (await sync_to_async(log_of)())[-1] == ("payment_read", "pending", "paid", "status_poll", "poll-7")


async def test_a_machines_reports_name_its_credential(fake: FakeProvider, order: Order) -> None:
    from tests.payments.test_machine_api import report

    token = await sync_to_async(services.device_credential_issue)(device_id=order.device_id)
    key_id = (await DeviceCredential.objects.aget(device_id=order.device_id)).key_id
    await paid_order(fake, order, two_stage=False)
    for outcome in ("make_pending", "successful"):
        assert (await report(token, order.pk, outcome)).status_code == 200
    assert (await sync_to_async(log_of)())[-2:] == [
        ("status", "paid", "make_pending", "machine", key_id), ("status", "make_pending", "successful", "machine", key_id)]


def test_a_staff_action_names_the_user_and_what_the_provider_did(admin_client: Any, order: Order, fake_server: Any,
                                                                settings: Any, admin_user: Any) -> None:
    paid_at_the_fake(order, fake_server, settings)
    services.order_mark_make_pending(order_id=order.pk)
    admin_client.post("/admin/payments/order/", {"action": "mark_make_failed", "_selected_action": [order.pk]})
    fields = ("operation", "status_from", "status_to", "cause", "reference", "user_id", "refunded_kopecks")
    assert [row for row in log_of(ORDER_ID, *fields) if row[3] == "staff"] == [
        ("status", "make_pending", "make_failed", "staff", "admin", admin_user.pk, 0),
        ("money_return", "make_failed", "refund_pending", "staff", "admin", admin_user.pk, 0),
        ("refund", "refund_pending", "refunded", "staff", "admin", admin_user.pk, order.price_kopecks),
    ]


def test_reconciliation_names_its_run_on_the_events_it_writes(fake_server: Any, settings: Any, device: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    fake_server.app.reset()
    for order_id in ("run-1", "run-2"):
        payment_at_the_fake(services.order_create(**scan_parameters(order_id=order_id)), fake_server, settings)
    Order.objects.update(updated_at=timezone.now() - datetime.timedelta(hours=1))
    with caplog.at_level(logging.INFO, logger="payments.management.commands.reconcile_payments"):
        call_command("reconcile_payments", stdout=StringIO())
    [run_id] = [found for record in caplog.records
                if (found := re.fullmatch(r"reconciliation run ([0-9a-f]{32})", record.getMessage()))]
    for order_id in ("run-1", "run-2"):
        assert log_of(order_id)[-1] == ("payment_read", "pending", "paid", "reconciliation", run_id.group(1))


def test_the_event_is_written_with_the_change_or_neither(order: Order, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("the event could not be written")

    monkeypatch.setattr(events, "event_record", broken)
    with pytest.raises(RuntimeError):
        services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1")
    monkeypatch.undo()
    assert Order.objects.values_list("status", "provider_payment_id").get(pk=order.pk) == ("created", None)
    with pytest.raises(RuntimeError, match="must be written in the transaction of its change"):
        events.event_record(order_id=order.pk, status_from="created", status_to="created")
    with transaction.atomic():
        events.event_record(order_id=order.pk, status_from="created", status_to="created", detail="x" * 500)
    assert len(OrderEvent.objects.order_by("id").last().detail) == 200


def test_a_refused_transition_writes_no_event(order: Order) -> None:
    with pytest.raises(IllegalTransition):
        services.order_mark_paid(order_id=order.pk)
    assert log_of() == [("scan", "", "created", "unrecorded", "")]


def test_the_event_log_is_never_changed_or_deleted(order: Order) -> None:
    services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1")
    before = log_of(ORDER_ID, "id", "operation", "status_from", "status_to", "detail")
    event = OrderEvent.objects.order_by("id").first()
    event.detail = "rewritten"
    attempts = [
        event.save, event.delete, lambda: OrderEvent.objects.filter(order_id=order.pk).update(detail="rewritten"),
        OrderEvent.objects.filter(order_id=order.pk).delete, lambda: OrderEvent.objects.bulk_update([event], ["detail"]),
    ]
    for attempt in attempts:
        with pytest.raises(RecordsPermanent, match="event log is append-only"):
            attempt()
    assert log_of(ORDER_ID, "id", "operation", "status_from", "status_to", "detail") == before


def test_the_admin_shows_the_log_in_order_and_read_only(admin_client: Any, order: Order) -> None:
    services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1")
    services.order_mark_paid(order_id=order.pk)
    page = admin_client.get(f"/admin/payments/order/{order.pk}/change/").content.decode()
    rows = [page.index(text) for text in ("Created by a scan", "Waiting for payment → Payment in progress",
                                         "Payment in progress → Paid")]
    assert rows == sorted(rows) and "Event log" in page
    assert 'name="events-0-detail"' not in page and "events-0-DELETE" not in page
    before = log_of(ORDER_ID, "id", "detail")
    form = {"events-TOTAL_FORMS": 1, "events-INITIAL_FORMS": 1, "events-0-id": before[0][0],
            "events-0-order": order.pk, "events-0-detail": "rewritten", "events-0-DELETE": "on"}
    admin_client.post(f"/admin/payments/order/{order.pk}/change/", form)
    assert log_of(ORDER_ID, "id", "detail") == before
    russian = admin_client.get(f"/admin/payments/order/{order.pk}/change/", HTTP_ACCEPT_LANGUAGE="ru").content.decode()
    assert "Журнал событий" in russian and "Создан по QR-коду" in russian
    assert admin_client.get("/admin/payments/orderevent/").status_code == 404  # no page of its own to edit
