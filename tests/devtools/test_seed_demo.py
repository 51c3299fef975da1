"""`manage.py seed_demo`: demo merchant and machines, and QR links that work."""

from __future__ import annotations

import os
import re
import subprocess
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from django.core.management import CommandError, call_command
from django.http import QueryDict

from devtools.processes import REPO
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


def test_links_default_to_where_customers_reach_the_server(settings: Any) -> None:
    settings.PUBLIC_BASE_URL = "http://192.168.1.20:18000"
    assert all(link.startswith("http://192.168.1.20:18000/v1/pay?") for link in seed())


def make(target: str, tmp_path: Path, **variables: str) -> str:
    """`make <target>` in the checkout, on a database of its own, with nothing of the suite's settings."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("DJANGO_", "GUNICORN_", "DATABASE_", "PAYMENT_", "MAKE", "MFLAGS"))}
    env |= {"DATABASE_URL": f"sqlite:///{tmp_path / 'make.sqlite3'}", **variables}
    result = subprocess.run(["make", "--no-print-directory", target], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize(("target", "variables", "base"), [
    ("manage", {"ARGS": "seed_demo --machine-tokens", "PORT": "18000"}, "http://localhost:18000"),
    ("seed", {"DJANGO_PUBLIC_BASE_URL": "http://192.168.1.20:8000"}, "http://192.168.1.20:8000"),
    ("seed", {"BASE_URL": "http://10.0.0.5:8000", "DJANGO_PUBLIC_BASE_URL": "http://192.168.1.20:8000"},
     "http://10.0.0.5:8000"),
])
def test_make_prints_links_where_port_base_url_or_the_public_base_url_say(
    tmp_path: Path, target: str, variables: dict[str, str], base: str
) -> None:
    make("migrate", tmp_path)
    printed = re.findall(r"\s(https?://\S+/v1/pay\?\S+)", make(target, tmp_path, **variables))
    assert printed and all(link.startswith(f"{base}/v1/pay?") for link in printed), printed
