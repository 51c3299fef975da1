"""Validation of every QR code parameter and of the customer's contact for a receipt: a refusal names
the parameter, the value and the rule (the contact's never repeats it)."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlencode

import pytest
from django.http import QueryDict
from django.utils import translation
from hypothesis import given, settings as hypothesis_settings, strategies as st

from devtools.fake_provider import _receipt_check
from payments.errors import ContactInvalid, InvalidParameter
from payments.forms import SCAN_PARAMETERS, Scan, contact_parse, scan_parse
from payments.receipts import payment_receipt

VALID = {"deviceUuid": "machine-1", "orderId": "20250317110122659ba6d7-9ace-cndn", "drinkNo": "2", "size": "2"}


def query(**changes: str | None) -> QueryDict:
    params = {k: v for k, v in {**VALID, **changes}.items() if v is not None}
    return QueryDict(urlencode(params))


def test_valid_scan_is_parsed() -> None:
    assert scan_parse(query()) == Scan(device_uuid="machine-1", order_id="20250317110122659ba6d7-9ace-cndn",
                                       drink_number=2, size=2, quoted_price_kopecks=None)


def test_an_older_links_price_is_kept_to_be_checked_and_its_drink_name_ignored() -> None:
    scan = scan_parse(query(price="15900", drinkName="Anything\x00at all", utm_source="poster"))
    assert (scan.quoted_price_kopecks, scan.drink_number) == (15900, 2)
    assert scan_parse(query(price="")).quoted_price_kopecks is None


@pytest.mark.parametrize("name", sorted(VALID))
@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_parameter_is_named(name: str, value: str | None) -> None:
    with pytest.raises(InvalidParameter) as refused:
        scan_parse(query(**{name: value}))
    assert refused.value.message == f"This QR code has no {SCAN_PARAMETERS[name]} ({name})."


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("deviceUuid", "machine 1", "is not 1-64 letters, digits, “-” or “_”"),
        ("deviceUuid", " machine-1", "is not 1-64 letters, digits, “-” or “_”"),
        ("deviceUuid", "m" * 65, "is not 1-64 letters, digits, “-” or “_”"),
        ("orderId", "../etc", "is not 1-64 letters, digits, “-” or “_”"),
        ("orderId", "order/1", "is not 1-64 letters, digits, “-” or “_”"),
        ("drinkNo", "0", "is out of range (allowed: 1..9999)"),
        ("drinkNo", "10000", "is out of range (allowed: 1..9999)"),
        ("drinkNo", "+2", "is not a whole number (allowed: 1..9999)"),
        ("drinkNo", "2.0", "is not a whole number (allowed: 1..9999)"),
        ("drinkNo", "١٢", "is not a whole number (allowed: 1..9999)"),
        ("size", "4", "is not one of 1 (small), 2 (medium), 3 (large)"),
        ("size", "0", "is not one of 1 (small), 2 (medium), 3 (large)"),
        ("size", "large", "is not one of 1 (small), 2 (medium), 3 (large)"),
        ("price", "0", "is out of range (allowed: 1..1000000)"),
        ("price", "159.00", "is not a whole number (allowed: 1..1000000)"),
        ("price", "-100", "is not a whole number (allowed: 1..1000000)"),
        ("price", "1_000", "is not a whole number (allowed: 1..1000000)"),
        ("price", "1000001", "is out of range (allowed: 1..1000000)"),
    ],
)
def test_bad_parameter_is_named_with_its_value(name: str, value: str, message: str) -> None:
    with pytest.raises(InvalidParameter) as refused:
        scan_parse(query(**{name: value}))
    shown = value if len(value) <= 70 else value[:70] + "..."
    assert refused.value.message == f"This QR code's {SCAN_PARAMETERS[name]} ({name}={shown!r}) {message}."


def test_a_parameter_given_twice_is_refused() -> None:
    with pytest.raises(InvalidParameter) as refused:
        scan_parse(QueryDict(urlencode(VALID) + "&size=3"))
    assert refused.value.message == "This QR code gives its size (size) 2 times (allowed: once)."


@hypothesis_settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted({*VALID, "price"})), value=st.text(max_size=80))
def test_any_value_is_accepted_or_refused_in_one_line_naming_the_parameter(name: str, value: str) -> None:
    try:
        scan_parse(query(**{name: value}))
    except InvalidParameter as refused:
        assert f"({name}" in refused.message and "\n" not in refused.message



# The customer's contact for a receipt ------------------------------------------------------------

@pytest.mark.parametrize(("typed", "stored"), [
    ("ivan.petrov@example.ru", "ivan.petrov@example.ru"),
    ("  Ivan@Mail.ru ", "Ivan@Mail.ru"),
    ("+7 900 123-45-67", "79001234567"),
    ("8 (900) 123-45-67", "79001234567"),
    ("9001234567", "79001234567"),
    ("+44 20 7946 0958", "442079460958"),
])
def test_a_contact_is_an_email_as_typed_or_a_phone_as_e164_digits(typed: str, stored: str) -> None:
    assert contact_parse(typed, phone_allowed=True) == stored


@pytest.mark.parametrize(("typed", "phone_allowed", "message"), [
    ("", True, "Enter an e-mail address or a phone number for your receipt."),
    ("   ", False, "Enter an e-mail address for your receipt."),
    ("ivan@", True, "This is not an e-mail address. Please check it."),
    ("ivan@localhost", True, "This is not an e-mail address. Please check it."),
    ("ivan@" + "x" * 250 + ".ru", True, "This is not an e-mail address. Please check it."),
    ("+7 900 123-45-67", False, "This is not an e-mail address. Please check it."),
    ("+7 000 000 00 00", True, "This is not a phone number."),
    ("8900123456x", True, "This is not a phone number."),
    ("12345", True, "This is not a phone number."),
    ("+49 3000 0000000000", True, "This is not a phone number."),  # 16 digits: past E.164's 15
])
def test_a_bad_contact_is_refused_without_repeating_it(typed: str, phone_allowed: bool, message: str) -> None:
    with pytest.raises(ContactInvalid) as refused:
        contact_parse(typed, phone_allowed=phone_allowed)
    assert refused.value.message.startswith(message) and refused.value.status == 400
    assert not typed.strip() or typed.strip() not in refused.value.message


def test_a_contact_refusal_is_in_the_customers_language() -> None:
    with translation.override("ru"):
        with pytest.raises(ContactInvalid) as refused:
            contact_parse("12345", phone_allowed=True)
    assert refused.value.message.startswith("Это не номер телефона")


TYPED = st.one_of(st.text(max_size=300), st.emails().map(str), st.from_regex(r"\A\+?[0-9 ()-]{5,20}\Z"))


@hypothesis_settings(max_examples=300, deadline=None)
@given(typed=TYPED)
def test_any_typed_contact_is_refused_or_stored_as_the_provider_takes_it(typed: str) -> None:
    """Once stored, the contact is in the payment's body for good: the provider (the fake, which checks
    as the API does) must take whatever is accepted here."""
    try:
        contact = contact_parse(typed, phone_allowed=True)
    except ContactInvalid:
        return
    assert 0 < len(contact) <= 254 and contact == contact.strip()
    assert "@" in contact or (contact.isascii() and contact.isdigit())
    line = {"description": "Espresso", "quantity": "1", "amount": {"value": "1.00", "currency": "RUB"}, "vat_code": 1}
    _receipt_check(payment_receipt(template={"items": [line]}, contact=contact), amount=Decimal("1.00"))
