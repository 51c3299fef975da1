"""Order reads."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db.models.sql.compiler import SQLCompiler
from django.test import AsyncClient
from django.utils import timezone

from payments import credentials, selectors, services
from payments.errors import OrderNotFound
from payments.models import Device, Order

pytestmark = pytest.mark.django_db


def test_order_status_is_one_query(order: Order, django_assert_num_queries: Any) -> None:
    """The hot path: one primary-key read, nothing else."""
    with django_assert_num_queries(1) as captured:
        state = async_to_sync(selectors.order_get_status)(order_id=order.pk)
    assert state is not None and state.status == "created"
    sql = captured.captured_queries[0]["sql"]
    assert '"payments_order"."id" = ' in sql and "JOIN" not in sql


@pytest.mark.forged_status
def test_a_poll_not_waiting_on_the_provider_is_one_query(order: Order, django_assert_num_queries: Any) -> None:
    """The view's whole work for a created order, and for a pending one whose payment another poll
    re-read within ORDER_PROVIDER_RECHECK_SECONDS: the one status read (which carries the claim's time)."""
    poll = async_to_sync(AsyncClient().get)
    with django_assert_num_queries(1):
        assert poll(f"/v1/order-status/{order.pk}").json()["status"] == "created"
    Order.objects.filter(pk=order.pk).update(status="pending", provider_payment_id="pay-1",
                                             provider_checked_at=timezone.now())
    with django_assert_num_queries(1):
        assert poll(f"/v1/order-status/{order.pk}").json()["status"] == "pending"


def test_the_polls_compile_their_queries_once(order: Order, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first poll, a status or machine poll runs the SQL it compiled then (compiling was
    the ORM's largest share of a poll's CPU); the values still pass the ORM's converters."""
    token = services.device_credential_issue(device_id=order.device_id)
    key_id = credentials.token_key_id(token)
    read, find = async_to_sync(selectors.order_get_status), async_to_sync(selectors.machine_order_find)
    read(order_id="nope")
    find(key_id="nope", order_id="nope")
    compiled: list[SQLCompiler] = []
    as_sql = SQLCompiler.as_sql
    monkeypatch.setattr(SQLCompiler, "as_sql", lambda self, *args, **kwargs: (
        compiled.append(self), as_sql(self, *args, **kwargs))[1])
    state = read(order_id=order.pk)
    found = find(key_id=key_id, order_id=order.pk)
    assert compiled == []
    assert state is not None and (state.order_id, state.status, state.price_kopecks) == (order.pk, "created", 15900)
    assert state.expires_at == order.expires_at and state.expires_at.tzinfo is not None
    assert found is not None and found[2] == state
    assert read(order_id=order.pk + "x") is None
    # The machine's last call, a joined column, is converted like the ORM's own read converts it.
    seen = timezone.now()
    Device.objects.filter(pk=order.device_id).update(last_seen_at=seen)
    again = find(key_id=key_id, order_id=order.pk)
    assert again is not None and again[3] == seen and again[3].tzinfo is not None


def test_a_machine_poll_reads_its_order_and_credential_in_one_query(order: Order, django_assert_num_queries: Any) -> None:
    """The order with the token hash of its machine's credential, in one read; nothing for another
    machine's key, an unknown key or an unknown order."""
    token = services.device_credential_issue(device_id=order.device_id)
    key_id = credentials.token_key_id(token)
    assert key_id is not None
    find = async_to_sync(selectors.machine_order_find)
    with django_assert_num_queries(1):
        found = find(key_id=key_id, order_id=order.pk)
    assert found is not None
    device_id, token_hash, state, last_seen_at = found
    assert device_id == order.device_id and credentials.token_matches(token, token_hash) and last_seen_at is None
    assert state == async_to_sync(selectors.order_get_status)(order_id=order.pk)
    other = Device.objects.create(device_uuid="machine-2", merchant_id=order.merchant_id, location="Hall")
    other_key = credentials.token_key_id(services.device_credential_issue(device_id=other.pk))
    assert other_key is not None
    assert find(key_id=other_key, order_id=order.pk) is None
    assert find(key_id=key_id, order_id="no-such-order") is None
    assert find(key_id="no-such-key", order_id=order.pk) is None


@pytest.mark.parametrize(
    ("status", "paid"),
    [("created", False), ("pending", False), ("paid", True), ("make_pending", True), ("successful", True),
     ("make_failed", True), ("manual_make", True), ("not_paid", False), ("failed", False)],
)
@pytest.mark.forged_status
def test_the_machine_sees_whether_the_money_is_taken(order: Order, status: str, paid: bool) -> None:
    Order.objects.filter(pk=order.pk).update(status=status)
    state = async_to_sync(selectors.order_get_status)(order_id=order.pk)
    assert state is not None
    shown = state.as_machine_json(now=timezone.now())
    assert (shown["paid"], shown["amount_paid_kopecks"]) == (paid, 15900 if paid else 0)


def test_order_status_json(order: Order) -> None:
    state = async_to_sync(selectors.order_get_status)(order_id=order.pk)
    assert state is not None
    assert state.as_json(now=timezone.now()) == {
        "order_id": order.pk, "status": "created", "label": "Waiting for payment", "final": False, "expired": False,
        "drink_number": 2, "drink_name": "Cappuccino", "size": 2, "size_label": "Medium",
        "amount_kopecks": 15900, "amount": "159.00", "currency": "RUB",
    }
    later = order.expires_at + datetime.timedelta(seconds=1)
    assert state.as_json(now=later)["expired"] is True


@pytest.mark.parametrize(
    ("status", "final"),
    [("created", False), ("pending", False), ("paid", False), ("make_pending", False), ("make_failed", False),
     ("not_paid", True), ("successful", True), ("failed", True), ("manual_make", True)],
)
@pytest.mark.forged_status
def test_final_statuses_stop_the_polling(order: Order, status: str, final: bool) -> None:
    Order.objects.filter(pk=order.pk).update(status=status)
    state = async_to_sync(selectors.order_get_status)(order_id=order.pk)
    assert state is not None and state.as_json(now=timezone.now())["final"] is final


def test_unknown_order_has_no_status() -> None:
    assert async_to_sync(selectors.order_get_status)(order_id="nope") is None
    with pytest.raises(OrderNotFound):
        async_to_sync(selectors.order_get)(order_id="nope")


def test_order_get_loads_device_and_merchant_in_one_query(order: Order, django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(1):
        loaded = async_to_sync(selectors.order_get)(order_id=order.pk)
        assert (loaded.device.device_uuid, loaded.merchant.shop_id) == ("machine-1", "demo-shop")


def test_order_is_found_by_payment_id_or_by_hint_while_it_has_none(order: Order) -> None:
    find = async_to_sync(selectors.order_find_for_payment)
    assert find(payment_id="pay-1", order_id_hint=order.pk).pk == order.pk
    services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1")
    assert find(payment_id="pay-1", order_id_hint=None).pk == order.pk
    # Once the order has a payment, a hint cannot attach another payment to it.
    assert find(payment_id="pay-2", order_id_hint=order.pk) is None
