"""Reads compiled to SQL once."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.core.exceptions import ImproperlyConfigured
from django.db.models import F, Q

from payments.compiled_read import CompiledRead
from payments.models import Order

pytestmark = pytest.mark.django_db


def test_parameters_reach_the_sql_in_its_order_whatever_the_keywords_order(order: Order) -> None:
    read = CompiledRead(lambda name, order_id: Order.objects.filter(pk=order_id, drink_name=name))
    one = async_to_sync(read.one)
    assert one(order_id=order.pk, name="Cappuccino") == order
    assert one(name="Cappuccino", order_id=order.pk) == order
    assert one(order_id=order.pk, name="Latte") is None


def test_a_row_has_the_selected_columns_and_annotations(order: Order) -> None:
    read = CompiledRead(lambda order_id: Order.objects.only("status").annotate(shop=F("merchant__shop_id"))
                        .filter(pk=order_id))
    found = async_to_sync(read.one)(order_id=order.pk)
    assert found is not None and (found.status, found.shop) == ("created", "demo-shop")
    assert found.get_deferred_fields() >= {"drink_name", "price_kopecks"}


def test_an_annotation_gets_the_converters_of_the_orms_own_read(order: Order) -> None:
    """raw() converts only the model's own columns: a joined datetime would be text on SQLite."""
    read = CompiledRead(lambda order_id: Order.objects.only("status").annotate(seen=F("device__created_at"))
                        .filter(pk=order_id))
    found = async_to_sync(read.one)(order_id=order.pk)
    created = Order.objects.values_list("device__created_at", flat=True).get(pk=order.pk)
    assert found is not None and isinstance(found.seen, datetime.datetime) and found.seen == created


@pytest.mark.parametrize("build", [
    pytest.param(lambda order_id: Order.objects.filter(pk__startswith=order_id), id="changed by its lookup"),
    pytest.param(lambda order_id: Order.objects.filter(Q(pk=order_id) | Q(provider_payment_id=order_id)), id="twice"),
    pytest.param(lambda order_id, unused: Order.objects.filter(pk=order_id), id="unused"),
])
def test_a_parameter_that_is_not_one_sql_parameter_unchanged_is_refused(build: Callable[..., Any]) -> None:
    read = CompiledRead(build)
    with pytest.raises(ImproperlyConfigured, match="must be one parameter, unchanged"):
        async_to_sync(read.one)(order_id="x", unused="y")
