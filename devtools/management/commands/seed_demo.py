"""`manage.py seed_demo`: a demo merchant, two coffee machines with a menu each, and QR links.

Safe to run again: the merchant, machines and menus are updated in place. Every run prints links
with fresh order ids, as a machine would show a fresh QR code for each drink chosen. The links
carry the drink number and size only; the name and price come from the machine's menu.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from devtools.demo_data import DEMO_SHOP_ID, MENU_ENTRIES, demo_seed, machine_order_id
from payments.models import IDENTIFIER, Size

# The drinks a link is printed for: (drink number, size), each on the menu.
LINKED = ((1, Size.SMALL), (2, Size.MEDIUM), (3, Size.LARGE))


class Command(BaseCommand):
    help = "Create or update a demo merchant and coffee machines; print QR links to try the payment flow."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", help="where customers reach the server (default: DJANGO_PUBLIC_BASE_URL)")
        parser.add_argument("--shop-id", default=DEMO_SHOP_ID, help="provider shop id of the demo merchant")
        parser.add_argument("--machine-tokens", action="store_true",
                            help="issue and print a machine API token per machine (the previous one stops working)")

    def handle(self, *args: Any, **options: Any) -> None:
        shop_id, base_url = options["shop_id"], (options["base_url"] or settings.PUBLIC_BASE_URL).rstrip("/")
        if not re.fullmatch(IDENTIFIER, shop_id):
            raise CommandError(f"--shop-id={shop_id!r} is not 1-64 letters, digits, '-' or '_'")
        if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
            raise CommandError(f"--base-url={base_url!r} is not an http(s) URL")
        merchant, devices = demo_seed(shop_id=shop_id, machine_tokens=options["machine_tokens"])
        self.stdout.write(f"merchant {merchant.name!r}, shop {shop_id}, active until {merchant.active_until}")
        names = {(entry.drink_number, entry.size): entry.drink_name for entry in MENU_ENTRIES}
        for seeded in devices:
            device = seeded.device
            if seeded.token is not None:
                self.stdout.write(f"device {device.device_uuid}: machine API token {seeded.token}")
            self.stdout.write(f"device {device.device_uuid} ({device.status}) at {device.location}; QR links:")
            for number, size in LINKED:
                query = urllib.parse.urlencode({
                    "deviceUuid": device.device_uuid, "orderId": machine_order_id(timezone.now()),
                    "drinkNo": number, "size": int(size),
                })
                self.stdout.write(f"  {names[number, size]:<11} {base_url}/v1/pay?{query}")
        if any(seeded.token for seeded in devices):
            # Liveness (payments/liveness.py): a machine with a token takes orders only while it calls.
            self.stdout.write("a machine with a token takes orders while it calls the machine API, e.g. "
                              f"curl -H 'Authorization: Bearer <token>' {base_url}/v1/machine/menu")
