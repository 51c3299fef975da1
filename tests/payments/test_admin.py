"""Admin pages for merchants, devices and orders; status changes only through transitions."""

from __future__ import annotations

import re
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from payments import credentials, provider, services
from payments.models import Device, DeviceCredential, Order, OrphanPayment
from tests.payments.conftest import SECRET, SHOP_ID

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("model", ["merchant", "device", "order"])
def test_admin_lists_and_shows_each_model(admin_client: Any, order: Order, model: str) -> None:
    assert admin_client.get(f"/admin/payments/{model}/").status_code == 200
    pk = {"merchant": order.merchant_id, "device": order.device_id, "order": order.pk}[model]
    assert admin_client.get(f"/admin/payments/{model}/{pk}/change/").status_code == 200


def test_staff_see_orphan_payments_and_cannot_change_or_delete_them(admin_client: Any, order: Order) -> None:
    record = OrphanPayment.objects.create(provider_payment_id="pay-9", shop_id=SHOP_ID, order_id=order.pk,
                                          amount_kopecks=15900, reason=f"order {order.pk!r} is failed",
                                          provider_status="succeeded", status="return_failed")
    listing = admin_client.get("/admin/payments/orphanpayment/?status__exact=return_failed")
    assert listing.status_code == 200 and "pay-9" in listing.content.decode()
    assert "Return refused: staff must return the money" in listing.content.decode()
    assert admin_client.get(f"/admin/payments/orphanpayment/{record.pk}/change/").status_code == 200
    admin_client.post(f"/admin/payments/orphanpayment/{record.pk}/change/", {"status": "returned"})
    assert OrphanPayment.objects.get().status == "return_failed"
    assert admin_client.get("/admin/payments/orphanpayment/add/").status_code == 403
    assert admin_client.get(f"/admin/payments/orphanpayment/{record.pk}/delete/").status_code == 403


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
    page = response.content.decode()
    # Plain words, the statuses as the list shows them; nothing changed is a warning, not a success.
    assert (f'<li class="warning">Order {order.pk} is “Made by staff”: only an order that is “Payment in progress”'
            ' or “Ready, completing payment” or “Waiting for payment” can be marked “Failed”.</li>') in page
    assert '<li class="warning">Nothing changed: none of the selected orders could be marked “Failed”.</li>' in page
    assert 'class="success"' not in page and "manual_make" not in page.split('id="changelist"')[0]
    assert Order.objects.get(pk=order.pk).status == "manual_make"


def test_admin_action_messages_follow_the_staffs_language(admin_client: Any, order: Order) -> None:
    response = admin_client.post("/admin/payments/order/", {"action": "mark_manual_make", "_selected_action": [order.pk]},
                                 follow=True, HTTP_ACCEPT_LANGUAGE="ru")
    page = response.content.decode()
    assert (f"Заказ {order.pk} в состоянии «Ожидает оплаты»: отметить «Выдано персоналом» можно только заказ в "
            "состоянии «Не удалось приготовить» или «Оплачено».") in page
    assert "Ничего не изменилось" in page and Order.objects.get(pk=order.pk).status == "created"


def test_staff_edit_the_menu_inline_on_the_machine(admin_client: Any, device: Device) -> None:
    page = admin_client.get(f"/admin/payments/device/{device.pk}/change/").content.decode()
    assert "menu_items-0-price_kopecks" in page and 'value="15900"' in page


def change_form_data(response: Any) -> dict[str, Any]:
    """What the change page would post back unchanged: the form's and every inline's values."""
    form = response.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and name in form.fields}
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        data |= {f"{formset.prefix}-{key}": value for key, value in formset.management_form.initial.items()}
        data[f"{formset.prefix}-TOTAL_FORMS"] = len(formset.initial_forms)  # no extra, empty rows
        for each in formset.initial_forms:
            data |= {each.add_prefix(name): value for name, value in each.initial.items() if value is not None}
            data[each.add_prefix("id")] = each.instance.pk
    return data


def test_staff_give_the_machines_texts_per_language(admin_client: Any, device: Device) -> None:
    url = f"/admin/payments/device/{device.pk}/change/"
    data = change_form_data(admin_client.get(url))
    data |= {"texts-TOTAL_FORMS": 1, "texts-0-language": "ru", "texts-0-welcome_text": "Добро пожаловать!",
             "texts-0-thank_you_text": "Спасибо!"}
    assert admin_client.post(url, data).status_code == 302
    assert list(device.texts.values_list("language", "welcome_text", "thank_you_text")) == [
        ("ru", "Добро пожаловать!", "Спасибо!")]
    data |= {"texts-0-language": "de"}
    assert "texts-0-language" in admin_client.post(url, data).content.decode()  # not a page language: refused


def test_issuing_a_token_shows_it_once_and_retires_the_old_one(admin_client: Any, device: Device) -> None:
    old = services.device_credential_issue(device_id=device.pk)
    response = admin_client.post("/admin/payments/device/", {"action": "issue_credential",
                                                              "_selected_action": [device.pk]})
    page = response.content.decode()
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    token = re.search(r"<code>([0-9a-f]{16}\.[\w-]{43})</code>", page)
    assert token is not None and old not in page
    stored = DeviceCredential.objects.get(device=device)
    assert credentials.token_matches(token.group(1), stored.token_sha256)
    assert not credentials.token_matches(old, stored.token_sha256)
    assert token.group(1) not in admin_client.get(f"/admin/payments/device/{device.pk}/change/").content.decode()
    assert token.group(1) not in admin_client.get("/admin/payments/device/").content.decode()
def payment_at_the_fake(order: Order, fake_server: Any, settings: Any) -> str:
    """A payment of the order that the customer paid at the running fake provider, recorded as
    pending (its notification not applied), for a sync test; its id."""
    settings.PAYMENT_PROVIDER_URL = fake_server.api_url
    settings.PAYMENT_PROVIDER_SECRETS = {SHOP_ID: SECRET}

    async def create() -> provider.ProviderPayment:
        try:
            return await provider.payment_create(shop_id=SHOP_ID, order_id=order.pk, amount_kopecks=order.price_kopecks,
                                                 description="Latte", return_url="http://testserver/back")
        finally:
            await provider.aclose()

    payment = async_to_sync(create, force_new_loop=True)()
    fake_server.app.settle(payment.id, "succeeded")
    services.order_mark_pending(order_id=order.pk, provider_payment_id=payment.id)
    return payment.id


def paid_at_the_fake(order: Order, fake_server: Any, settings: Any) -> str:
    """The order paid (single-stage) at the running fake provider, reset first; the payment's id."""
    fake_server.app.reset()
    payment_id = payment_at_the_fake(order, fake_server, settings)
    services.order_mark_paid(order_id=order.pk)
    return payment_id


@pytest.mark.django_db(transaction=True)
def test_marking_a_paid_order_could_not_be_made_refunds_it(admin_client: Any, order: Order, fake_server: Any,
                                                          settings: Any) -> None:
    payment = paid_at_the_fake(order, fake_server, settings)
    services.order_mark_make_pending(order_id=order.pk)
    response = admin_client.post(
        "/admin/payments/order/", {"action": "mark_make_failed", "_selected_action": [order.pk]}, follow=True
    )
    assert '<li class="success">1 order marked “Could not be made”.</li>' in response.content.decode()
    stored = Order.objects.get(pk=order.pk)
    assert (stored.status, stored.refunded_kopecks) == ("refunded", order.price_kopecks)
    assert [refund.payment_id for refund in fake_server.app.refunds.values()] == [payment]
@pytest.mark.parametrize("selected", ["abc", "99999999999999999999999", ""])
def test_an_action_on_malformed_ids_is_a_400_not_a_500(admin_client: Any, order: Order, selected: str) -> None:
    response = admin_client.post("/admin/payments/merchant/", {"action": "delete_selected", "_selected_action": [selected]})
    assert response.status_code == 400
    assert response.content.decode() == f"_selected_action={selected!r} is not the id of a merchant"
    assert order.merchant.__class__.objects.filter(pk=order.merchant_id).exists()


def test_the_device_list_shows_when_each_machine_was_seen_and_filters_by_connection(
    admin_client: Any, device: Device, settings: Any
) -> None:
    silent = Device.objects.create(device_uuid="machine-silent", merchant=device.merchant, location="Hall")
    seen = Device.objects.create(device_uuid="machine-seen", merchant=device.merchant, location="Hall")
    for machine in (silent, seen):
        services.device_credential_issue(device_id=machine.pk)
    services.device_mark_seen(device_id=seen.pk)
    page = admin_client.get("/admin/payments/device/").content.decode()
    assert "Online (in touch)" in page and "Offline (not in touch)" in page and "No API token" in page
    assert "Last seen" in page
    for connection, shown in [("online", "machine-seen"), ("offline", "machine-silent"), ("none", "machine-1")]:
        listed = admin_client.get(f"/admin/payments/device/?connection={connection}").content.decode()
        names = {name for name in ("machine-seen", "machine-silent", "machine-1") if f">{name}<" in listed}
        assert names == {shown}, (connection, names)
    russian = admin_client.get("/admin/payments/device/", HTTP_ACCEPT_LANGUAGE="ru").content.decode()
    assert "На связи" in russian and "Не на связи" in russian
