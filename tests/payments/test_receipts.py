"""Receipts (54-FZ): the `receipt` a payment carries, judged by the official yookassa SDK's models.

A hypothesis property builds random menus (with and without each drink's own receipt line),
merchants' receipt settings and orders scanned from them, and requires every receipt the server
would send to add up to the order's amount exactly, to pass the SDK's own validation (PaymentRequest,
Receipt, ReceiptItem) with the SDK's allowed values, and to pass the fake provider's API checks.
"""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from yookassa.domain.models.receipt import Receipt
from yookassa.domain.models.receipt_data.receipt_item import PaymentMode as SdkPaymentMode
from yookassa.domain.models.receipt_data.receipt_item import PaymentSubject as SdkPaymentSubject
from yookassa.domain.models.receipt_data.receipt_item import ReceiptItemMeasure
from yookassa.domain.request.payment_request import PaymentRequest

from devtools.fake_provider import ApiError, _receipt_check
from payments import provider, receipts, services
from payments.errors import ShopNotConfigured
from payments.forms import MenuEntry, contact_parse
from payments.models import DRINK_NAME_MAX, PRICE_MAX, Device, MenuItem, Merchant, Order
from payments.receipts import PaymentMode, PaymentSubject, TaxSystem, VatCode
from tests.payments.conftest import scan_parameters

pytestmark = pytest.mark.django_db


def sdk_values(constants: type) -> set[str]:
    return {value for name, value in vars(constants).items() if name.isupper()}


def test_the_receipt_values_offered_are_the_sdks() -> None:
    assert set(PaymentSubject.values) == sdk_values(SdkPaymentSubject)
    assert set(PaymentMode.values) == sdk_values(SdkPaymentMode)
    assert receipts.MEASURE in sdk_values(ReceiptItemMeasure)


def test_a_drinks_own_receipt_line_wins_over_the_merchants(merchant: Merchant, device: Device) -> None:
    Merchant.objects.filter(pk=merchant.pk).update(receipts_enabled=True, vat_code=VatCode.NONE,
                                                   tax_system_code=TaxSystem.SIMPLIFIED_INCOME)
    MenuItem.objects.filter(device=device, drink_number=2, size=2).update(vat_code=VatCode.VAT_22,
                                                                          payment_subject=PaymentSubject.SERVICE)
    order = services.order_create(**scan_parameters())
    assert order.receipt == {
        "items": [{"description": "Cappuccino, средний", "quantity": "1.000",
                   "amount": {"value": "159.00", "currency": "RUB"}, "vat_code": 11, "payment_subject": "service",
                   "payment_mode": "full_payment", "measure": "piece"}],
        "tax_system_code": 2,
    }
    espresso = services.order_create(**scan_parameters(order_id="o-espresso", drink_number=1, size=1))
    assert espresso.receipt is not None and "tax_system_code" in espresso.receipt
    line = espresso.receipt["items"][0]
    assert (line["vat_code"], line["payment_subject"], line["description"]) == (1, "commodity", "Espresso, маленький")


def test_without_receipts_an_order_has_none_and_without_a_vat_rate_no_order_is_taken(
    merchant: Merchant, device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    assert services.order_create(**scan_parameters()).receipt is None
    Merchant.objects.filter(pk=merchant.pk).update(receipts_enabled=True)  # no VAT rate anywhere
    with pytest.raises(ShopNotConfigured):
        services.order_create(**scan_parameters(order_id="o-2"))
    assert "set its VAT rate in the admin" in caplog.text
    assert not Order.objects.filter(pk="o-2").exists()


def test_a_merchant_with_receipts_needs_a_vat_rate_in_the_admin(merchant: Merchant) -> None:
    from django.core.exceptions import ValidationError

    merchant.receipts_enabled = True
    with pytest.raises(ValidationError) as refused:
        merchant.full_clean()
    assert "vat_code" in refused.value.message_dict


# The property -------------------------------------------------------------------------------------

RECEIPT_LINE = st.fixed_dictionaries({
    "vat_code": st.one_of(st.none(), st.sampled_from(VatCode.values)),
    "payment_subject": st.one_of(st.just(""), st.sampled_from(PaymentSubject.values)),
    "payment_mode": st.one_of(st.just(""), st.sampled_from(PaymentMode.values)),
})
DRINK_NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1,
                      max_size=DRINK_NAME_MAX).map(str.strip).filter(bool)
MENUS = st.lists(
    st.tuples(st.integers(1, 9999), st.integers(1, 3), DRINK_NAMES, st.integers(1, PRICE_MAX), RECEIPT_LINE),
    min_size=1, max_size=6, unique_by=lambda entry: entry[:2],
)
MERCHANTS = st.fixed_dictionaries({
    "vat_code": st.sampled_from(VatCode.values),
    "payment_subject": st.sampled_from(PaymentSubject.values),
    "payment_mode": st.sampled_from(PaymentMode.values),
    "tax_system_code": st.one_of(st.none(), st.sampled_from(TaxSystem.values)),
})
CONTACTS = st.one_of(
    st.from_regex(r"\A[a-z0-9]([a-z0-9_+-]|\.(?!\.)){0,19}[a-z0-9]@[a-z0-9]{1,20}\.(ru|com|org)\Z"),
    st.sampled_from(["+7 900 123-45-67", "8 (912) 345-67-89", "9161234567", "+44 20 7946 0958", "+1 202 555 0143"]),
)


def test_every_receipt_the_server_would_send_adds_up_and_passes_the_sdks_validation(merchant: Merchant) -> None:
    machines = itertools.count()

    @hypothesis_settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(menu=MENUS, settings=MERCHANTS, pick=st.integers(0, 5), contact=CONTACTS)
    def one_order(menu: list[tuple[int, int, str, int, dict[str, Any]]], settings: dict[str, Any], pick: int,
                  contact: str) -> None:
        Merchant.objects.filter(pk=merchant.pk).update(receipts_enabled=True, **settings)
        device = Device.objects.create(device_uuid=f"machine-r{next(machines)}", merchant=merchant, location="Hall")
        services.device_menu_replace(device_id=device.pk, entries=[
            MenuEntry(drink_number=number, size=size, drink_name=name, price_kopecks=price, available=True, **line)
            for number, size, name, price, line in menu
        ])
        number, size, name, price, line = menu[pick % len(menu)]
        order = services.order_create(order_id=f"o-{device.device_uuid}", device_uuid=device.device_uuid,
                                      drink_number=number, size=size, now=timezone.now())
        assert order.receipt is not None
        receipt = receipts.payment_receipt(template=order.receipt, contact=contact_parse(contact, phone_allowed=True))

        # It adds up: unit price times quantity, line by line, is the amount charged.
        total = sum(Decimal(item["amount"]["value"]) * Decimal(item["quantity"]) for item in receipt["items"])
        assert total == Decimal(order.price_kopecks) / 100 == Decimal(price) / 100
        # The line is the drink's own where it has one, else the merchant's.
        [item] = receipt["items"]
        assert item["vat_code"] == (line["vat_code"] or settings["vat_code"])
        assert item["payment_subject"] == (line["payment_subject"] or settings["payment_subject"])
        assert item["payment_mode"] == (line["payment_mode"] or settings["payment_mode"])
        assert item["description"].startswith(name[:receipts.DESCRIPTION_MAX - 1])
        assert len(item["description"]) <= receipts.DESCRIPTION_MAX

        # The SDK's models take it as a payment's receipt, with its validation and allowed values.
        body = {"amount": {"value": provider.rubles(order.price_kopecks), "currency": "RUB"}, "capture": True,
                "confirmation": {"type": "redirect", "return_url": "https://shop.example/back"}, "receipt": receipt}
        PaymentRequest(body).validate()
        model = Receipt(receipt)
        [sdk_item] = model.items
        assert sdk_item.payment_subject in sdk_values(SdkPaymentSubject)
        assert sdk_item.payment_mode in sdk_values(SdkPaymentMode)
        assert sdk_item.measure in sdk_values(ReceiptItemMeasure)
        assert 1 <= sdk_item.vat_code <= 12 and sdk_item.amount.value == total
        assert model.tax_system_code == settings["tax_system_code"]
        assert (model.customer.email or model.customer.phone) == receipt["customer"].get("email", receipt["customer"].get("phone"))
        # And so does the fake provider, which checks receipts as the API does.
        try:
            _receipt_check(receipt, amount=total)
        except ApiError as refused:
            raise AssertionError(refused.body) from None

    one_order()
