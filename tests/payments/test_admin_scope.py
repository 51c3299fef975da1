"""Staff see and change only their merchants' records, on every admin page and through every action.

Found, not listed: every ModelAdmin the site has, each of its URLs and each of its actions is read
from the site, so a page or an action added later is checked without touching this file. A staff user
with every permission stands for the worst case: only the scope stands between them and the other
merchant's records.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.core import serializers
from django.test import Client, RequestFactory
from django.urls import URLPattern, reverse
from django.utils import timezone

from coffee_payment.admin_site import SuperusersOnly
from payments import services
from payments.admin_mixins import MerchantScoped
from payments.models import Device, DeviceText, Merchant, MenuItem, Order, OrphanPayment, Sales

# Each merchant's records are created directly, behind the services (no event log to replay).
pytestmark = [pytest.mark.django_db, pytest.mark.forged_status]

# Text that names the other merchant's records: none of it may reach a page its staff cannot see.
THEIRS = ("Other Coffee", "other-machine", "Harbour", "other-order", "other-pay", "shop-other")


def merchant_with_records(name: str, prefix: str, location: str, shop_id: str) -> dict[type, Any]:
    merchant = Merchant.objects.create(name=name, contact_email=f"{prefix}@example.com", shop_id=shop_id,
                                       active_until=timezone.localdate() + datetime.timedelta(days=30))
    device = Device.objects.create(device_uuid=f"{prefix}-machine", merchant=merchant, location=location)
    MenuItem.objects.create(device=device, drink_number=1, size=1, drink_name="Espresso", price_kopecks=9900)
    DeviceText.objects.create(device=device, language="ru", welcome_text="Привет")
    services.device_credential_issue(device_id=device.pk)
    order = Order.objects.create(id=f"{prefix}-order", device=device, merchant=merchant, drink_number=1,
                                 drink_name="Espresso", size=1, price_kopecks=9900, expires_at=timezone.now())
    orphan = OrphanPayment.objects.create(provider_payment_id=f"{prefix}-pay", shop_id=shop_id, order_id=order.pk,
                                          amount_kopecks=9900, reason="order is failed", provider_status="succeeded")
    return {Merchant: merchant, Device: device, Order: order, OrphanPayment: orphan, Sales: Sales.objects.get(pk=order.pk)}


@pytest.fixture
def records() -> dict[str, dict[type, Any]]:
    return {"ours": merchant_with_records("Our Coffee", "our", "Lobby", "shop-ours"),
            "theirs": merchant_with_records("Other Coffee", "other", "Harbour", "shop-other")}


def staff_user(name: str, *merchants: Merchant) -> User:
    user = User.objects.create_user(name, password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.all())
    for merchant in merchants:
        merchant.staff.add(user)
    return user


def client_of(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def anna(records: dict[str, dict[type, Any]]) -> User:
    """Staff of our merchant, with every permission there is."""
    return staff_user("anna", records["ours"][Merchant])


def database_state() -> str:
    """Every row the admin could change, as JSON."""
    models = [model for model in apps.get_models() if model._meta.app_label in {"payments", "auth"}]
    return "\n".join(serializers.serialize("json", model._default_manager.order_by("pk")) for model in models)


def registered() -> list[admin.ModelAdmin]:
    return list(admin.site._registry.values())


def scoped() -> list[admin.ModelAdmin]:
    return [model_admin for model_admin in registered() if isinstance(model_admin, MerchantScoped)]


def admin_urls(model_admin: admin.ModelAdmin, obj: Any) -> list[str]:
    """Every URL of the ModelAdmin, object pages pointing at `obj`."""
    urls = []
    for pattern in model_admin.urls:
        if not isinstance(pattern, URLPattern) or pattern.name is None:
            continue
        keys = set(pattern.pattern.regex.groupindex)
        if keys <= {"object_id"}:
            urls.append(reverse(f"admin:{pattern.name}", kwargs={"object_id": obj.pk} if keys else {}))
    return urls


def test_every_model_admin_is_scoped_to_merchants_or_for_superusers_only() -> None:
    assert registered() and scoped()
    assert [type(model_admin).__name__ for model_admin in registered()
            if not isinstance(model_admin, (MerchantScoped, SuperusersOnly))] == []
    for model_admin in scoped():
        assert all(issubclass(inline, MerchantScoped) for inline in model_admin.inlines), type(model_admin)


def test_the_fixture_has_records_of_every_scoped_model(records: dict[str, dict[type, Any]]) -> None:
    assert {model_admin.model for model_admin in scoped()} <= set(records["theirs"])


def test_staff_never_see_another_merchants_records_on_any_page(records: dict[str, dict[type, Any]], anna: User) -> None:
    client = client_of(anna)
    visited = 0
    for model_admin in scoped():
        for obj in (records["ours"][model_admin.model], records["theirs"][model_admin.model]):
            for url in admin_urls(model_admin, obj):
                # Followed: a missing object's redirect shows its message (which echoes the id asked for).
                response = client.get(url, follow=True)
                page = response.content.decode()
                leaked = [text for text in THEIRS if text in page and text != str(obj.pk)]
                assert leaked == [], (url, leaked)
                visited += 1
    autocomplete = client.get("/admin/autocomplete/", {"app_label": "payments", "model_name": "order",
                                                        "field_name": "device", "term": ""})
    assert autocomplete.status_code == 200 and [r["text"] for r in autocomplete.json()["results"]] == [
        "our-machine (Lobby)"]
    assert visited >= 20


@pytest.mark.parametrize("page", ["change", "delete", "history"])
def test_another_merchants_object_pages_are_not_found(records: dict[str, dict[type, Any]], anna: User,
                                                     page: str) -> None:
    client = client_of(anna)
    for model_admin in scoped():
        obj = records["theirs"][model_admin.model]
        try:
            url = reverse(f"admin:{model_admin.opts.app_label}_{model_admin.opts.model_name}_{page}", args=[obj.pk])
        except Exception:  # the report has no object pages
            continue
        response = client.get(url, follow=True)
        assert "doesn’t exist" in response.content.decode() or response.status_code in (403, 404), url
        ours = reverse(f"admin:{model_admin.opts.app_label}_{model_admin.opts.model_name}_{page}",
                       args=[records["ours"][model_admin.model].pk])
        assert client.get(ours).status_code in (200, 403), ours  # 403: a page nobody may use (deleting money records)


def test_no_action_reaches_another_merchants_records(records: dict[str, dict[type, Any]], anna: User) -> None:
    client = client_of(anna)
    request = RequestFactory().get("/admin/")
    request.user = anna
    tried = []
    for model_admin in scoped():
        theirs = records["theirs"][model_admin.model]
        for name in model_admin.get_actions(request):
            before = database_state()
            changelist = reverse(f"admin:{model_admin.opts.app_label}_{model_admin.opts.model_name}_changelist")
            response = client.post(changelist, {"action": name, "_selected_action": [theirs.pk], "post": "yes"})
            assert response.status_code in (200, 302)
            assert not any(text in response.content.decode() for text in THEIRS), (name, response.content[:500])
            assert database_state() == before, f"{type(model_admin).__name__}.{name} changed another merchant's records"
            tried.append(name)
    assert {"delete_selected", "issue_credential", "mark_failed", "mark_manual_make", "mark_make_failed"} <= set(tried)
    # The same action on our own order does what it says.
    ours = records["ours"][Order]
    client.post("/admin/payments/order/", {"action": "mark_failed", "_selected_action": [ours.pk]})
    assert Order.objects.get(pk=ours.pk).status == "failed"


def test_staff_linked_to_no_merchant_see_nothing(records: dict[str, dict[type, Any]]) -> None:
    client = client_of(staff_user("newcomer"))
    for model_admin in scoped():
        obj = records["ours"][model_admin.model]
        for url in admin_urls(model_admin, obj):
            page = client.get(url, follow=True).content.decode()
            assert [text for text in (*THEIRS, "Our Coffee", "our-machine", "our-order", "our-pay")
                    if text in page and text != str(obj.pk)] == [], url


def test_superusers_see_every_merchant(records: dict[str, dict[type, Any]], admin_client: Client) -> None:
    for url in ("/admin/payments/order/", "/admin/payments/device/", "/admin/payments/merchant/"):
        page = admin_client.get(url).content.decode()
        assert "our-" in page or "Our Coffee" in page
        assert "other-" in page or "Other Coffee" in page


def test_users_groups_and_login_records_are_for_superusers_only(anna: User, admin_client: Client) -> None:
    client = client_of(anna)
    others = [model_admin for model_admin in registered() if isinstance(model_admin, SuperusersOnly)]
    assert {model_admin.model for model_admin in others} >= {User}
    for model_admin in others:
        changelist = reverse(f"admin:{model_admin.opts.app_label}_{model_admin.opts.model_name}_changelist")
        assert client.get(changelist).status_code == 403, changelist
        assert admin_client.get(changelist).status_code == 200, changelist
    assert "/admin/auth/user/" not in client.get("/admin/").content.decode()


def test_staff_cannot_move_a_machine_or_touch_the_operators_fields(records: dict[str, dict[type, Any]],
                                                                  anna: User) -> None:
    client = client_of(anna)
    ours, theirs = records["ours"], records["theirs"]
    page = client.get(f"/admin/payments/merchant/{ours[Merchant].pk}/change/").content.decode()
    assert 'name="staff"' not in page and 'name="shop_id"' not in page and 'name="active_until"' not in page
    client.post(f"/admin/payments/merchant/{ours[Merchant].pk}/change/", {
        "name": "Our Coffee", "contact_email": "our@example.com", "shop_id": "shop-other", "payment_methods": "any",
        "payment_subject": "commodity", "payment_mode": "full_payment", "staff": [anna.pk]})
    assert Merchant.objects.get(pk=ours[Merchant].pk).shop_id == "shop-ours"
    assert client.get("/admin/payments/merchant/add/").status_code == 403
    from tests.payments.test_admin import change_form_data

    url = f"/admin/payments/device/{ours[Device].pk}/change/"
    data = change_form_data(client.get(url)) | {"merchant": theirs[Merchant].pk}
    response = client.post(url, data)
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert Device.objects.get(pk=ours[Device].pk).merchant_id == ours[Merchant].pk


def test_superusers_link_staff_to_merchants(records: dict[str, dict[type, Any]], admin_client: Client) -> None:
    page = admin_client.get(f"/admin/payments/merchant/{records['ours'][Merchant].pk}/change/").content.decode()
    assert 'name="staff"' in page
