"""Validation of every QR code parameter: a refusal names the parameter, the value and the rule."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from django.http import QueryDict
from hypothesis import given, settings as hypothesis_settings, strategies as st

from payments.errors import InvalidParameter
from payments.forms import SCAN_PARAMETERS, Scan, scan_parse

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
