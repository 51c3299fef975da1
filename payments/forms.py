"""The QR code's query parameters, validated strictly; a refusal names the parameter and its value."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django import forms
from django.http import QueryDict

from payments.errors import InvalidParameter
from payments.models import IDENTIFIER
# Kopecks: up to 10 000 roubles, far above any drink; a bigger number is a broken code.
PRICE_MAX = 1_000_000
DRINK_NUMBER_MAX = 9999
DRINK_NAME_MAX = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class WholeNumberField(forms.Field):
    """Decimal digits only: int() would also take "+5", " 5", "5_000" and other scripts' digits."""

    def __init__(self, *, low: int, high: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.low, self.high = low, high

    def to_python(self, value: Any) -> int | None:
        if value in self.empty_values:
            return None
        if not re.fullmatch(r"[0-9]{1,9}", str(value)):
            raise forms.ValidationError(f"is not a whole number (allowed: {self.low}..{self.high})")
        number = int(value)
        if not self.low <= number <= self.high:
            raise forms.ValidationError(f"is out of range (allowed: {self.low}..{self.high})")
        return number


class DrinkNameField(forms.CharField):
    def to_python(self, value: Any) -> str:
        text = super().to_python(value)
        if _CONTROL.search(text):
            raise forms.ValidationError("contains control characters")
        return text


def _identifier() -> forms.RegexField:
    return forms.RegexField(
        regex=rf"\A{IDENTIFIER}\Z", strip=False, error_messages={"invalid": "is not 1-64 letters, digits, '-' or '_'"}
    )


class ScanForm(forms.Form):
    deviceUuid = _identifier()
    orderId = _identifier()
    drinkNo = WholeNumberField(low=1, high=DRINK_NUMBER_MAX)
    drinkName = DrinkNameField(
        max_length=DRINK_NAME_MAX, error_messages={"max_length": f"is longer than {DRINK_NAME_MAX} characters"}
    )
    size = forms.TypedChoiceField(
        choices=[("1", "small"), ("2", "medium"), ("3", "large")],
        coerce=int,
        error_messages={"invalid_choice": "is not one of 1 (small), 2 (medium), 3 (large)"},
    )
    price = WholeNumberField(low=1, high=PRICE_MAX)


@dataclass(frozen=True)
class Scan:
    device_uuid: str
    order_id: str
    drink_number: int
    drink_name: str
    size: int
    price_kopecks: int


def scan_parse(query: QueryDict) -> Scan:
    """The scan's parameters, or InvalidParameter naming the first bad one."""
    form = ScanForm(query)
    for name in form.fields:
        count = len(query.getlist(name))
        if count > 1:
            raise InvalidParameter(f"{name} is given {count} times (allowed: once)")
    if not form.is_valid():
        name, messages = next(iter(form.errors.items()))
        raw = query.get(name, "")
        if not raw.strip():
            raise InvalidParameter(f"{name} is missing")
        shown = raw if len(raw) <= 70 else raw[:70] + "..."
        raise InvalidParameter(f"{name}={shown!r} {messages[0]}")
    data = form.cleaned_data
    return Scan(
        device_uuid=data["deviceUuid"],
        order_id=data["orderId"],
        drink_number=data["drinkNo"],
        drink_name=data["drinkName"],
        size=data["size"],
        price_kopecks=data["price"],
    )
