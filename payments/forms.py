"""What machines and customers send, validated strictly: the QR code's query parameters, a
machine's menu and the customer's contact for a receipt. A refusal names the parameter (or field)
and its value; the contact, personal data, it never repeats."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import phonenumbers
from django import forms
from django.core.validators import EmailValidator
from django.http import QueryDict
from django.utils.translation import gettext as _, gettext_lazy

from payments.errors import ContactInvalid, InvalidParameter
from payments.json_input import json_input_parse
from payments.models import DRINK_NAME_MAX, DRINK_NUMBER_MAX, IDENTIFIER, PRICE_MAX, Size
from payments.receipts import PaymentMode, PaymentSubject, VatCode

# 9999 drinks in three sizes is not a menu; a few hundred entries is a large one.
MENU_ITEMS_MAX = 300
# A lone surrogate (JSON "\ud800") is a str but no UTF-8: the database driver would fail on it.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


class WholeNumberField(forms.Field):
    """Decimal digits only: int() would also take "+5", " 5", "5_000" and other scripts' digits."""

    def __init__(self, *, low: int, high: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.low, self.high = low, high

    def to_python(self, value: Any) -> int | None:
        if value in self.empty_values:
            return None
        bounds = {"low": self.low, "high": self.high}
        if not re.fullmatch(r"[0-9]{1,9}", str(value)):
            raise forms.ValidationError("not a whole number", code="not_whole", params=bounds)
        number = int(value)
        if not self.low <= number <= self.high:
            raise forms.ValidationError("out of range", code="out_of_range", params=bounds)
        return number


class ScanForm(forms.Form):
    deviceUuid = forms.RegexField(regex=rf"\A{IDENTIFIER}\Z", strip=False)
    orderId = forms.RegexField(regex=rf"\A{IDENTIFIER}\Z", strip=False)
    drinkNo = WholeNumberField(low=1, high=DRINK_NUMBER_MAX)
    size = forms.TypedChoiceField(choices=[(str(size), size) for size in Size.values], coerce=int)
    # Optional, from older links: only compared with the menu's price (services.order_create).
    price = WholeNumberField(low=1, high=PRICE_MAX, required=False)


@dataclass(frozen=True)
class Scan:
    device_uuid: str
    order_id: str
    drink_number: int
    size: int
    # The `price` of an older link, if it has one: never charged, only checked against the menu.
    quoted_price_kopecks: int | None


# Each QR code parameter in the customer's words; refusals name both.
SCAN_PARAMETERS = {
    "deviceUuid": gettext_lazy("coffee machine"), "orderId": gettext_lazy("order number"),
    "drinkNo": gettext_lazy("drink number"), "size": gettext_lazy("size"), "price": gettext_lazy("price"),
}


def _scan_refusal(name: str, raw: str, error: forms.ValidationError) -> str:
    """The customer's message for a bad parameter, in the request's language."""
    shown = raw if len(raw) <= 70 else raw[:70] + "..."
    named = {**(error.params or {}), "what": SCAN_PARAMETERS[name], "name": name, "value": repr(shown)}
    if error.code == "not_whole":
        return _("This QR code's %(what)s (%(name)s=%(value)s) is not a whole number "
                 "(allowed: %(low)d..%(high)d).") % named
    if error.code == "out_of_range":
        return _("This QR code's %(what)s (%(name)s=%(value)s) is out of range (allowed: %(low)d..%(high)d).") % named
    if error.code == "invalid_choice":
        named["allowed"] = ", ".join(f"{size} ({str(label).lower()})" for size, label in Size.choices)
        return _("This QR code's %(what)s (%(name)s=%(value)s) is not one of %(allowed)s.") % named
    return _("This QR code's %(what)s (%(name)s=%(value)s) is not 1-64 letters, digits, “-” or “_”.") % named


def scan_parse(query: QueryDict) -> Scan:
    """The scan's parameters, or InvalidParameter naming the first bad one (in the customer's words,
    with the parameter's name and value).

    Parameters other than the form's (`drinkName` of older links, a tracker's `utm_source`) are
    ignored: the drink's name and price come from the machine's menu.
    """
    form = ScanForm(query)
    for name in form.fields:
        count = len(query.getlist(name))
        if count > 1:
            raise InvalidParameter(_("This QR code gives its %(what)s (%(name)s) %(count)d times (allowed: once).")
                                   % {"what": SCAN_PARAMETERS[name], "name": name, "count": count})
    if not form.is_valid():
        name, errors = next(iter(form.errors.as_data().items()))
        raw = query.get(name, "")
        if not raw.strip():
            raise InvalidParameter(_("This QR code has no %(what)s (%(name)s).")
                                   % {"what": SCAN_PARAMETERS[name], "name": name})
        raise InvalidParameter(_scan_refusal(name, raw, errors[0]))
    data = form.cleaned_data
    return Scan(
        device_uuid=data["deviceUuid"],
        order_id=data["orderId"],
        drink_number=data["drinkNo"],
        size=data["size"],
        quoted_price_kopecks=data["price"],
    )


@dataclass(frozen=True)
class MenuEntry:
    drink_number: int
    size: int
    drink_name: str
    price_kopecks: int
    available: bool
    # The receipt line's, where the drink's differ from the merchant's (None, "": the merchant's).
    vat_code: int | None = None
    payment_subject: str = ""
    payment_mode: str = ""


_MENU_REQUIRED = ("drink_number", "size", "drink_name", "price_kopecks", "available")
# The optional fields of a receipt line, each with its allowed values.
MENU_RECEIPT_FIELDS = {
    "vat_code": VatCode.values, "payment_subject": PaymentSubject.values, "payment_mode": PaymentMode.values,
}
_MENU_FIELDS = (*_MENU_REQUIRED, *MENU_RECEIPT_FIELDS)


def _menu_number(item: dict[str, Any], key: str, where: str, *, low: int, high: int) -> int:
    value = item[key]
    # JSON true is a Python int, and 2.0 equals 2: a machine sending either has a bug worth naming.
    if type(value) is not int or not low <= value <= high:
        raise InvalidParameter(f"{where}.{key}={value!r} is not a whole number in {low}..{high}")
    return value


def _menu_item(item: Any, where: str) -> MenuEntry:
    if not isinstance(item, dict):
        raise InvalidParameter(f"{where} is not an object")
    unknown = sorted(set(item) - set(_MENU_FIELDS))
    if unknown:
        raise InvalidParameter(f"{where} has unknown field {unknown[0]!r} (allowed: {', '.join(_MENU_FIELDS)})")
    missing = [key for key in _MENU_REQUIRED if key not in item]
    if missing:
        raise InvalidParameter(f"{where}.{missing[0]} is missing")
    name, available = item["drink_name"], item["available"]
    if not isinstance(name, str) or not name.strip() or len(name) > DRINK_NAME_MAX or _CONTROL.search(name):
        raise InvalidParameter(f"{where}.drink_name is not 1-{DRINK_NAME_MAX} characters without control characters")
    if not isinstance(available, bool):
        raise InvalidParameter(f"{where}.available={available!r} is not true or false")
    return MenuEntry(
        drink_number=_menu_number(item, "drink_number", where, low=1, high=DRINK_NUMBER_MAX),
        size=_menu_number(item, "size", where, low=min(Size.values), high=max(Size.values)),
        drink_name=name.strip(),
        price_kopecks=_menu_number(item, "price_kopecks", where, low=1, high=PRICE_MAX),
        available=available,
        **_menu_receipt_fields(item, where),
    )


def _menu_receipt_fields(item: dict[str, Any], where: str) -> dict[str, Any]:
    """The optional receipt fields, each one of the provider's values or null (the merchant's)."""
    fields: dict[str, Any] = {}
    for key, allowed in MENU_RECEIPT_FIELDS.items():
        value = item.get(key)
        if value is None:
            continue
        # JSON true is a Python int and 11.0 equals 11: named, not taken.
        if type(value) is not type(allowed[0]) or value not in allowed:
            shown = ", ".join(map(str, allowed)) if key != "vat_code" else f"{min(allowed)}..{max(allowed)}"
            raise InvalidParameter(f"{where}.{key}={value!r:.40} is not one of {shown} (or null: the merchant's)")
        fields[key] = value
    return fields


def menu_parse(body: bytes) -> list[MenuEntry]:
    """A machine's whole menu, `{"items": [{drink_number, size, drink_name, price_kopecks, available,
    optional vat_code, payment_subject, payment_mode}]}`, or InvalidParameter naming the first bad
    field (`items[3].size=4 is not ...`)."""
    data = json_input_parse(body, what="the body")
    if not isinstance(data, dict) or set(data) != {"items"} or not isinstance(data["items"], list):
        raise InvalidParameter('the body is not {"items": [...]}')
    if len(data["items"]) > MENU_ITEMS_MAX:
        raise InvalidParameter(f"items has {len(data['items'])} entries (allowed: up to {MENU_ITEMS_MAX})")
    entries = [_menu_item(item, f"items[{index}]") for index, item in enumerate(data["items"])]
    seen: dict[tuple[int, int], int] = {}
    for index, entry in enumerate(entries):
        first = seen.setdefault((entry.drink_number, entry.size), index)
        if first != index:
            raise InvalidParameter(
                f"items[{index}] repeats drink {entry.drink_number} size {entry.size} of items[{first}]"
            )
    return entries


# The longest e-mail address a mail server takes (RFC 5321 path); a phone number as people type it.
CONTACT_MAX = 254
_PHONE_TYPED = re.compile(r"\+?[0-9 ()./-]{5,32}")
E164_DIGITS_MAX = 15
# No "user@localhost": a receipt goes to a mailbox on the internet.
_EMAIL = EmailValidator(allowlist=())


def contact_parse(text: str | None, *, phone_allowed: bool) -> str:
    """Where the customer wants the receipt: an e-mail address as typed, or a phone number as the
    E.164 digits the provider takes ("79001234567"; a number without a country code is Russian).
    ContactInvalid, in the customer's language, never repeats what was typed."""
    text = (text or "").strip()
    if not text and phone_allowed:
        raise ContactInvalid(_("Enter an e-mail address or a phone number for your receipt."))
    if not text:
        raise ContactInvalid(_("Enter an e-mail address for your receipt."))
    if "@" in text or not phone_allowed:
        try:
            if len(text) > CONTACT_MAX:
                raise forms.ValidationError("too long")
            _EMAIL(text)
        except forms.ValidationError:
            raise ContactInvalid(_("This is not an e-mail address. Please check it.")) from None
        return text
    number = None
    if _PHONE_TYPED.fullmatch(text):
        try:
            number = phonenumbers.parse(text, "RU")
        except phonenumbers.NumberParseException:
            number = None
    digits = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).removeprefix("+") if (
        number is not None and phonenumbers.is_valid_number(number)) else ""
    # E.164 allows 15 digits at most; the library calls some longer German numbers valid.
    if not digits or len(digits) > E164_DIGITS_MAX:
        raise ContactInvalid(_("This is not a phone number. Please enter it with its country code, "
                               "e.g. +7 900 123-45-67."))
    return digits


class StaffRefundForm(forms.Form):
    """The admin's refund of an order: how much and why. `key` is the refund's id, drawn when the page
    was opened: the same form sent twice is one refund (services.staff_refund_request)."""

    key = forms.UUIDField(widget=forms.HiddenInput)
    amount = forms.DecimalField(label=gettext_lazy("Amount to refund, ₽"), min_value=Decimal("0.01"),
                                max_value=Decimal(PRICE_MAX) / 100, decimal_places=2, localize=True)
    reason = forms.CharField(label=gettext_lazy("Reason"), max_length=200,
                             help_text=gettext_lazy("Kept in the order's event log and sent with the refund."))

    @property
    def amount_kopecks(self) -> int:
        return int(self.cleaned_data["amount"] * 100)
