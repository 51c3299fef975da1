"""The demo merchant and its two coffee machines with a menu each: `manage.py seed_demo` prints QR
links for them, the bench (bench/seed.py) pays for their drinks.

Safe to run again: the merchant, machines and menus are updated in place. Through the app's own
services, so a seeded machine is what the admin or the machine API would have made.
"""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass

from django.utils import timezone

from payments import services
from payments.forms import MenuEntry
from payments.models import Device, DeviceStatus, DeviceText, Merchant, Size

DEMO_SHOP_ID = "demo-shop"
DEVICES = (
    ("demo-machine-lobby", "Lobby, ground floor", DeviceStatus.ONLINE),
    ("demo-machine-test", "Workshop bench", DeviceStatus.TEST),
)
# The demo menu: (drink number, name, size, price in kopecks).
MENU = (
    (1, "Espresso", Size.SMALL, 9900),
    (1, "Espresso", Size.MEDIUM, 12900),
    (2, "Cappuccino", Size.MEDIUM, 15900),
    (2, "Cappuccino", Size.LARGE, 18900),
    (3, "Latte", Size.LARGE, 19900),
)
MENU_ENTRIES = [
    MenuEntry(drink_number=number, size=int(size), drink_name=name, price_kopecks=price, available=True)
    for number, name, size, price in MENU
]


@dataclass(frozen=True)
class SeededDevice:
    device: Device
    # A fresh machine API token when one was asked for (the previous one stops working), else None.
    token: str | None


def demo_seed(*, shop_id: str = DEMO_SHOP_ID, machine_tokens: bool = False) -> tuple[Merchant, list[SeededDevice]]:
    """Create or update the demo merchant (provider shop `shop_id`) and its machines and menus."""
    merchant, _ = Merchant.objects.update_or_create(
        name="Demo Coffee",
        defaults={
            "contact_email": "demo@example.com",
            "shop_id": shop_id,
            "active_until": timezone.localdate() + datetime.timedelta(days=365),
        },
    )
    seeded = []
    for device_uuid, location, status in DEVICES:
        device, _ = Device.objects.update_or_create(
            device_uuid=device_uuid,
            defaults={
                "merchant": merchant, "location": location, "status": status, "brand_name": "Demo Coffee",
                "welcome_text": "Good to see you! Check your drink and pay.",
                "thank_you_text": "Enjoy your coffee!",
            },
        )
        # The texts above for every language; Russian customers get their own.
        DeviceText.objects.update_or_create(device=device, language="ru", defaults={
            "welcome_text": "Рады вас видеть! Проверьте напиток и оплатите.", "thank_you_text": "Приятного кофе!"})
        services.device_menu_replace(device_id=device.pk, entries=MENU_ENTRIES)
        token = services.device_credential_issue(device_id=device.pk) if machine_tokens else None
        seeded.append(SeededDevice(device=device, token=token))
    return merchant, seeded


def machine_order_id(now: datetime.datetime) -> str:
    """An order id shaped like the machines' (timestamp, random hex, suffix)."""
    return f"{now:%Y%m%d%H%M%S}{now.microsecond // 1000:03d}{secrets.token_hex(3)}-{secrets.token_hex(2)}-demo"
