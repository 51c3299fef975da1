"""Money records are permanent: an order that ever had a payment is never deleted, by any path, nor is
its machine or merchant; those are deactivated instead. Orders that never had one may go."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pytest
from django.db import transaction
from django.db.models.deletion import Collector, ProtectedError
from django.utils import timezone

from payments import services
from payments.errors import DeviceUnavailable, MerchantInactive, RecordsPermanent
from payments.models import (
    Device, DeviceCredential, DeviceStatus, MenuItem, Merchant, Order, OrderEvent, OrphanPayment, StaffRefund,
)
from tests.payments.conftest import SHOP_ID, scan_parameters

pytestmark = pytest.mark.django_db


def orders(*kinds: str) -> None:
    """Orders of machine-1 named by what they had: "unpaid" (nothing), "declined" (a provider payment
    that took nothing), "paid", "orphaned" (created, but a payment naming it was returned)."""
    for kind in kinds:
        services.order_create(**scan_parameters(order_id=kind))
        if kind in ("declined", "paid"):
            services.order_mark_pending(order_id=kind, provider_payment_id=f"pay-{kind}")
        if kind == "declined":
            services.order_mark_not_paid(order_id=kind)
        if kind == "paid":
            services.order_mark_paid(order_id=kind)
        if kind == "orphaned":
            OrphanPayment.objects.create(provider_payment_id="pay-orphan", shop_id=SHOP_ID, order_id=kind,
                                         amount_kopecks=15900, reason="expired", provider_status="succeeded")


def collector_delete(obj: Any) -> None:
    """Django's delete collector without the models' own delete methods (in a savepoint: its own
    transaction joins the test's)."""
    with transaction.atomic():
        collector = Collector(using="default")
        collector.collect([obj])
        collector.delete()


DELETES: dict[str, Callable[[Any], Any]] = {
    "instance": lambda obj: obj.delete(),
    "queryset": lambda obj: type(obj).objects.filter(pk=obj.pk).delete(),
    "collector": collector_delete,
}


# The collector alone sees only the order's own columns (models._order_delete_refuse): an orphan
# payment's trace is guarded by the models' delete paths, the ones every caller uses.
@pytest.mark.parametrize(("kind", "path"), [(kind, path) for kind in ("declined", "paid", "orphaned") for path in DELETES
                                            if (kind, path) != ("orphaned", "collector")])
def test_an_order_that_had_a_payment_is_never_deleted(device: Device, kind: str, path: str) -> None:
    orders(kind)
    with pytest.raises(RecordsPermanent) as refused:
        DELETES[path](Order.objects.get(pk=kind))
    assert f"Order {kind} had a payment: money records are kept for good and never deleted." in str(refused.value)
    assert Order.objects.filter(pk=kind).exists() and OrderEvent.objects.filter(order_id=kind).exists()


@pytest.mark.parametrize("path", DELETES)
def test_an_order_that_never_had_a_payment_goes_with_its_events(device: Device, path: str) -> None:
    orders("unpaid", "paid")
    DELETES[path](Order.objects.get(pk="unpaid"))
    assert list(Order.objects.values_list("pk", flat=True)) == ["paid"]
    assert set(OrderEvent.objects.values_list("order_id", flat=True)) == {"paid"}


def test_a_bulk_delete_is_refused_whole_naming_the_orders(device: Device) -> None:
    orders("unpaid", "declined", "paid")
    with pytest.raises(RecordsPermanent) as refused:
        Order.objects.all().delete()
    assert refused.value.message == ("Orders declined, paid had a payment: money records are kept for good and "
                                     "never deleted.")
    assert Order.objects.count() == 3


@pytest.mark.parametrize("path", DELETES)
@pytest.mark.parametrize("owner", ["device", "merchant"])
def test_a_machine_or_merchant_with_such_orders_is_not_deleted_and_nothing_of_it_goes(
    device: Device, owner: str, path: str
) -> None:
    orders("unpaid", "paid")
    services.device_credential_issue(device_id=device.pk)
    target = device if owner == "device" else device.merchant
    with pytest.raises(ProtectedError) as refused:
        DELETES[path](target)
    if path != "collector":  # the collector's own words; ours come from the models' delete paths
        said = refused.value.args[0]
        name = "Machine machine-1" if owner == "device" else "Merchant Test Coffee"
        assert said.startswith(f"{name} has orders that had a payment (paid): money records are kept for good")
        assert "Deactivate it instead: it takes no more orders and keeps its records." in said
    assert Order.objects.count() == 2 and Device.objects.exists() and Merchant.objects.exists()
    assert MenuItem.objects.filter(device=device).exists() and DeviceCredential.objects.filter(device=device).exists()


@pytest.mark.parametrize("path", ["instance", "queryset"])
def test_a_machine_whose_orders_never_had_a_payment_goes_with_them(device: Device, path: str) -> None:
    orders("unpaid")
    DELETES[path](device)
    assert not Order.objects.exists() and not OrderEvent.objects.exists() and not MenuItem.objects.exists()


def test_staff_refunds_are_never_deleted(device: Device) -> None:
    orders("paid")
    refund = StaffRefund.objects.create(order_id="paid", amount_kopecks=100, reason="test", username="staff")
    for attempt in (refund.delete, StaffRefund.objects.all().delete):
        with pytest.raises(RecordsPermanent, match="Staff refunds are money records"):
            attempt()
    assert StaffRefund.objects.count() == 1


def test_a_deactivated_machine_or_merchant_takes_no_orders_and_keeps_its_records(device: Device) -> None:
    orders("paid")
    assert services.devices_deactivate(device_ids=[device.pk]) == 1
    assert services.devices_deactivate(device_ids=[device.pk]) == 0
    with pytest.raises(DeviceUnavailable, match="is deactivated"):
        services.order_create(**scan_parameters(order_id="after"))
    Device.objects.update(status=DeviceStatus.ONLINE)
    today = timezone.localdate()
    assert services.merchants_deactivate(merchant_ids=[device.merchant_id], today=today) == 1
    assert Merchant.objects.get().active_until == today - datetime.timedelta(days=1)
    assert services.merchants_deactivate(merchant_ids=[device.merchant_id], today=today) == 0  # never later
    with pytest.raises(MerchantInactive):
        services.order_create(**scan_parameters(order_id="after"))
    assert Order.objects.filter(pk="paid").exists() and not Order.objects.filter(pk="after").exists()


# The admin ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "pk", "words"), [
    ("order", "paid", "Order paid had a payment: money records are kept for good and never deleted."),
    ("device", None, "Machine machine-1 has orders that had a payment (paid)"),
    ("merchant", None, "Merchant Test Coffee has orders that had a payment (paid)"),
])
def test_the_admin_refuses_the_delete_in_words_and_deletes_nothing(
    admin_client: Any, device: Device, model: str, pk: str | None, words: str
) -> None:
    orders("paid", "unpaid")
    pk = pk or {"device": device.pk, "merchant": device.merchant_id}[model]
    page = admin_client.get(f"/admin/payments/{model}/{pk}/delete/").content.decode()
    assert words in page and 'type="submit"' not in page.split('id="content"')[1]
    assert words in admin_client.post(f"/admin/payments/{model}/{pk}/delete/", {"post": "yes"}).content.decode()
    selected = admin_client.post(f"/admin/payments/{model}/", {"action": "delete_selected", "_selected_action": [pk],
                                                                "post": "yes"})
    assert words in selected.content.decode()
    assert Order.objects.count() == 2 and Device.objects.exists() and Merchant.objects.exists()
    russian = admin_client.get(f"/admin/payments/{model}/{pk}/delete/", HTTP_ACCEPT_LANGUAGE="ru").content.decode()
    assert "записи о деньгах хранятся всегда" in russian


def test_the_admin_deletes_an_order_that_never_had_a_payment(admin_client: Any, device: Device) -> None:
    orders("unpaid")
    assert admin_client.post("/admin/payments/order/unpaid/delete/", {"post": "yes"}).status_code == 302
    assert not Order.objects.exists() and not OrderEvent.objects.exists()


@pytest.mark.parametrize("model", ["device", "merchant"])
def test_staff_deactivate_machines_and_merchants_from_the_admin(admin_client: Any, device: Device, model: str) -> None:
    pk = {"device": device.pk, "merchant": device.merchant_id}[model]
    done = admin_client.post(f"/admin/payments/{model}/", {"action": "deactivate", "_selected_action": [pk]},
                             follow=True).content.decode()
    assert ("1 machine deactivated: it takes no more orders, its records stay." if model == "device" else
            "1 merchant deactivated: its machines take no more orders, its records stay.") in done
    with pytest.raises((DeviceUnavailable, MerchantInactive)):
        services.order_create(**scan_parameters())
