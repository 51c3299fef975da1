"""`manage.py seed_demo`: a demo merchant, two coffee machines with a menu each, and QR links.

Safe to run again: the merchant, machines and menus are updated in place. Every run prints links
with fresh order ids, as a machine would show a fresh QR code for each drink chosen. The links
carry the drink number and size only; the name and price come from the machine's menu.
"""

from __future__ import annotations

import datetime
import re
import secrets
import urllib.parse
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from payments import services
from payments.forms import MenuEntry
from payments.models import IDENTIFIER, Device, DeviceStatus, Merchant, Size

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
# The drinks a link is printed for: (drink number, size), each on the menu.
LINKED = ((1, Size.SMALL), (2, Size.MEDIUM), (3, Size.LARGE))


MENU_ENTRIES = [
    MenuEntry(drink_number=number, size=int(size), drink_name=name, price_kopecks=price, available=True)
    for number, name, size, price in MENU
]


def machine_order_id(now: datetime.datetime) -> str:
    """An order id shaped like the machines' (timestamp, random hex, suffix)."""
    return f"{now:%Y%m%d%H%M%S}{now.microsecond // 1000:03d}{secrets.token_hex(3)}-{secrets.token_hex(2)}-demo"


class Command(BaseCommand):
    help = "Create or update a demo merchant and coffee machines; print QR links to try the payment flow."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default="http://localhost:8000", help="where the server answers")
        parser.add_argument("--shop-id", default=DEMO_SHOP_ID, help="provider shop id of the demo merchant")
        parser.add_argument("--machine-tokens", action="store_true",
                            help="issue and print a machine API token per machine (the previous one stops working)")

    def handle(self, *args: Any, **options: Any) -> None:
        shop_id, base_url = options["shop_id"], options["base_url"].rstrip("/")
        if not re.fullmatch(IDENTIFIER, shop_id):
            raise CommandError(f"--shop-id={shop_id!r} is not 1-64 letters, digits, '-' or '_'")
        if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
            raise CommandError(f"--base-url={base_url!r} is not an http(s) URL")
        merchant, _ = Merchant.objects.update_or_create(
            name="Demo Coffee",
            defaults={
                "contact_email": "demo@example.com",
                "shop_id": shop_id,
                "active_until": timezone.localdate() + datetime.timedelta(days=365),
            },
        )
        self.stdout.write(f"merchant {merchant.name!r}, shop {shop_id}, active until {merchant.active_until}")
        for device_uuid, location, status in DEVICES:
            device, _ = Device.objects.update_or_create(
                device_uuid=device_uuid,
                defaults={
                    "merchant": merchant, "location": location, "status": status, "brand_name": "Demo Coffee",
                    "welcome_text": "Good to see you! Check your drink and pay.",
                    "thank_you_text": "Enjoy your coffee!",
                },
            )
            services.device_menu_replace(device_id=device.pk, entries=MENU_ENTRIES)
            if options["machine_tokens"]:
                token = services.device_credential_issue(device_id=device.pk)
                self.stdout.write(f"device {device_uuid}: machine API token {token}")
            self.stdout.write(f"device {device_uuid} ({status}) at {location}; QR links:")
            names = {(entry.drink_number, entry.size): entry.drink_name for entry in MENU_ENTRIES}
            for number, size in LINKED:
                query = urllib.parse.urlencode({
                    "deviceUuid": device_uuid, "orderId": machine_order_id(timezone.now()),
                    "drinkNo": number, "size": int(size),
                })
                self.stdout.write(f"  {names[number, size]:<11} {base_url}/v1/pay?{query}")
