"""Edited QR links never buy a drink at a price other than the menu's, and a refusal writes nothing.

Hypothesis takes a valid link and edits it at random: values replaced (by other valid-looking values
or junk), parameters removed, repeated or added (an older link's `price` and `drinkName` among
them). Every answer is a 200 order page at the menu's price or a 4xx page that left the database as
it was; never a 5xx.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from payments import services
from payments.models import Device, MenuItem, Order, OrderStatus
from tests.payments.conftest import menu_entries

pytestmark = pytest.mark.django_db

NAMES = ("deviceUuid", "orderId", "drinkNo", "size", "price", "price", "drinkName", "utm_source")
# Values that are valid somewhere: other machines, order ids, drinks, sizes and menu prices.
PLAUSIBLE = st.sampled_from(["machine-1", "machine-2", "machine-9", "o-1", "o-2", "o-3", "1", "2", "3", "4", "7",
                             "9900", "15900", "15901", "18900", "19900", "1", "0", "Cappuccino", "Latte", ""])
VALUES = st.one_of(PLAUSIBLE, st.integers(1, 1_000_000).map(str), st.integers(-3, 2_000_000).map(str),
                   st.text(max_size=12))
# Mostly a fresh order id (a new order), sometimes one that earlier examples may have used.
ORDER_IDS = st.one_of(st.uuids().map(lambda u: f"o-{u.hex[:16]}"), st.sampled_from(["o-1", "o-2"]))
EDIT = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(NAMES), VALUES),
    st.tuples(st.just("remove"), st.sampled_from(NAMES), st.just("")),
    st.tuples(st.just("repeat"), st.sampled_from(NAMES), VALUES),
)


def edited(order_id: str, edits: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    params = [("deviceUuid", "machine-1"), ("orderId", order_id), ("drinkNo", "2"), ("size", "2")]
    for action, name, value in edits:
        if action == "set":
            params = [(key, value if key == name else old) for key, old in params]
            if name not in dict(params):
                params.append((name, value))
        elif action == "remove":
            params = [(key, old) for key, old in params if key != name]
        else:
            params.append((name, value))
    return params


def snapshot() -> list[dict[str, Any]]:
    return list(Order.objects.order_by("pk").values())


def test_no_edited_link_yields_an_order_at_another_price_and_refusals_write_nothing(device: Device) -> None:
    other = Device.objects.create(device_uuid="machine-2", merchant=device.merchant, location="Hall")
    services.device_menu_replace(device_id=other.pk, entries=menu_entries({(2, 2): ("Flat white", 17500, True)}))
    menu = {(item.device.device_uuid, item.drink_number, item.size): item
            for item in MenuItem.objects.select_related("device")}
    client = Client()

    @hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(order_id=ORDER_IDS, edits=st.lists(EDIT, max_size=4))
    def scan_an_edited_link(order_id: str, edits: list[tuple[str, str, str]]) -> None:
        before = snapshot()
        response = client.get("/v1/pay?" + urlencode(edited(order_id, edits)))
        content = response.content.decode()
        assert response.status_code < 500, content
        if response.status_code != 200:
            assert 400 <= response.status_code < 500 and "Traceback" not in content
            assert snapshot() == before, "a refused scan wrote to the database"
            return
        order = response.context["order"]
        item = menu[(order.device.device_uuid, order.drink_number, order.size)]
        assert item.available
        assert (order.price_kopecks, order.drink_name) == (item.price_kopecks, item.drink_name)
        stored = Order.objects.get(pk=order.pk)
        assert (stored.price_kopecks, stored.status) == (item.price_kopecks, OrderStatus.CREATED)
        assert f"{order.price_rubles}\xa0₽" in content
        # Nothing else changed: at most this one order is new.
        assert [row for row in snapshot() if row["id"] != order.pk] == [row for row in before if row["id"] != order.pk]

    scan_an_edited_link()
