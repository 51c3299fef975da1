"""Admin pages for merchants, devices and orders; status changes only through transitions."""

from __future__ import annotations

from typing import Any

import pytest

from payments import services
from payments.models import Order

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("model", ["merchant", "device", "order"])
def test_admin_lists_and_shows_each_model(admin_client: Any, order: Order, model: str) -> None:
    assert admin_client.get(f"/admin/payments/{model}/").status_code == 200
    pk = {"merchant": order.merchant_id, "device": order.device_id, "order": order.pk}[model]
    assert admin_client.get(f"/admin/payments/{model}/{pk}/change/").status_code == 200


def test_order_status_is_not_editable_in_a_form(admin_client: Any, order: Order) -> None:
    admin_client.post(f"/admin/payments/order/{order.pk}/change/", {"status": "paid"})
    assert Order.objects.get(pk=order.pk).status == "created"
    assert admin_client.get("/admin/payments/order/add/").status_code == 403


def test_admin_action_applies_only_legal_transitions(admin_client: Any, order: Order) -> None:
    services.order_mark_pending(order_id=order.pk, provider_payment_id="pay-1")
    services.order_mark_paid(order_id=order.pk)
    response = admin_client.post(
        "/admin/payments/order/", {"action": "mark_manual_make", "_selected_action": [order.pk]}, follow=True
    )
    assert response.status_code == 200
    assert Order.objects.get(pk=order.pk).status == "manual_make"
    response = admin_client.post(
        "/admin/payments/order/", {"action": "mark_failed", "_selected_action": [order.pk]}, follow=True
    )
    assert "is manual_make and cannot become failed" in response.content.decode()
    assert Order.objects.get(pk=order.pk).status == "manual_make"


@pytest.mark.parametrize("selected", ["abc", "99999999999999999999999", ""])
def test_an_action_on_malformed_ids_is_a_400_not_a_500(admin_client: Any, order: Order, selected: str) -> None:
    response = admin_client.post("/admin/payments/merchant/", {"action": "delete_selected", "_selected_action": [selected]})
    assert response.status_code == 400
    assert response.content.decode() == f"_selected_action={selected!r} is not the id of a merchant"
    assert order.merchant.__class__.objects.filter(pk=order.merchant_id).exists()
