"""`manage.py seed_demo`: demo merchant and machines, and QR links that work."""

from __future__ import annotations

import re
from io import StringIO
from urllib.parse import parse_qsl, urlsplit

import pytest
from django.core.management import CommandError, call_command
from django.http import QueryDict

from payments import credentials, services
from payments.forms import scan_parse
from payments.models import Device, DeviceCredential, MenuItem, Merchant

pytestmark = pytest.mark.django_db


def seed(*args: str) -> list[str]:
    out = StringIO()
    call_command("seed_demo", *args, stdout=out)
    return [line.split()[-1] for line in out.getvalue().splitlines() if "/v1/pay?" in line]


def test_seed_creates_the_demo_and_prints_links_that_scan() -> None:
    links = seed("--base-url", "http://127.0.0.1:9000/")
    assert len(links) == 6 and all(link.startswith("http://127.0.0.1:9000/v1/pay?") for link in links)
    assert Merchant.objects.get().shop_id == "demo-shop"
    assert set(Device.objects.values_list("status", flat=True)) == {"online", "test"}
    for link in links:
        query = QueryDict(urlsplit(link).query)
        assert set(query) == {"deviceUuid", "orderId", "drinkNo", "size"}  # name and price: the menu's
        order = services.order_create(**vars(scan_parse(query)))
        assert order.price_kopecks == MenuItem.objects.get(device=order.device, drink_number=order.drink_number,
                                                           size=order.size).price_kopecks


def test_seed_twice_updates_in_place_with_fresh_order_ids() -> None:
    first, second = seed(), seed("--shop-id", "506751")
    assert (Merchant.objects.count(), Device.objects.count()) == (1, 2)
    assert Merchant.objects.get().shop_id == "506751"
    assert MenuItem.objects.count() == 2 * 5
    order_ids = {dict(parse_qsl(urlsplit(link).query))["orderId"] for link in first + second}
    assert len(order_ids) == 12


def test_seed_issues_machine_tokens_only_when_asked() -> None:
    seed()
    assert not DeviceCredential.objects.exists()
    out = StringIO()
    call_command("seed_demo", "--machine-tokens", stdout=out)
    tokens = dict(re.findall(r"^device ([\w-]+): machine API token (\S+)$", out.getvalue(), flags=re.MULTILINE))
    assert set(tokens) == {"demo-machine-lobby", "demo-machine-test"}
    # Scans of a machine with a token need it to call: the output says how.
    assert "takes orders while it calls the machine API" in out.getvalue()
    for device, token in tokens.items():
        stored = DeviceCredential.objects.get(device__device_uuid=device)
        assert credentials.token_matches(token, stored.token_sha256)


@pytest.mark.parametrize(("args", "message"), [(["--shop-id", "a b"], "--shop-id='a b'"),
                                                (["--base-url", "localhost"], "--base-url='localhost'")])
def test_bad_arguments_are_named(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("seed_demo", *args, stdout=StringIO())
