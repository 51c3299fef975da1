"""The fleet benchmark's database: thousands of machines, each with a token and an order to poll.

    python -m bench.fleet_seed --machines 4000 --out fleet.json   (with the server's DJANGO_* and DATABASE_URL)

Runs in a process of its own with the servers' environment. `manage.py seed_demo` makes the demo
merchant; every fleet machine gets seed_demo's menu, a machine API token and one order (a medium
Cappuccino as a QR scan makes it through `services.order_create`), the order its polls read.
Writes {"machines": [{"device": uuid, "token": token, "order": id}, ...]} to --out: the load
generator needs the tokens, which the database keeps only as hashes.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from bench.seed import django_setup

DEVICE_PREFIX = "fleet-machine-"
ORDER_PREFIX = "fleet-order-"


def seed(*, machines: int) -> list[dict[str, str]]:
    from django.core.management import call_command
    from django.db import transaction
    from django.utils import timezone

    from payments import credentials, services
    from devtools.demo_data import MENU_ENTRIES
    from payments.models import Device, DeviceCredential, DeviceStatus, Merchant, MenuItem, Order

    call_command("seed_demo", stdout=io.StringIO())
    merchant = Merchant.objects.get(name="Demo Coffee")
    now = timezone.now()
    # One transaction: thousands of machines in seconds instead of one commit each.
    with transaction.atomic():
        devices = Device.objects.bulk_create(
            # Seen now, as machines that poll (the benchmark's do): a silent one takes no orders.
            Device(device_uuid=f"{DEVICE_PREFIX}{number:05d}", merchant=merchant, location=f"Fleet {number}",
                   status=DeviceStatus.ONLINE, last_seen_at=now) for number in range(1, machines + 1))
        MenuItem.objects.bulk_create(MenuItem(device=device, **vars(entry)) for device in devices
                                     for entry in MENU_ENTRIES)
        issued = [credentials.credential_new() for _ in devices]
        DeviceCredential.objects.bulk_create(
            DeviceCredential(device=device, key_id=credential.key_id, token_sha256=credential.token_sha256,
                             issued_at=now) for device, credential in zip(devices, issued))
        # The first order as a scan makes it; the others are copies of it at their own machines
        # (one INSERT instead of four queries per machine).
        first = services.order_create(order_id=f"{ORDER_PREFIX}00001", device_uuid=devices[0].device_uuid,
                                      drink_number=2, size=2)
        same = {field: getattr(first, field) for field in ("merchant_id", "drink_number", "drink_name", "size",
                                                           "price_kopecks", "expires_at", "two_stage")}
        Order.objects.bulk_create(Order(pk=f"{ORDER_PREFIX}{number:05d}", device=device, **same)
                                  for number, device in enumerate(devices[1:], start=2))
        fleet = [{"device": device.device_uuid, "token": credential.token, "order": f"{ORDER_PREFIX}{number:05d}"}
                 for number, (device, credential) in enumerate(zip(devices, issued), start=1)]
    return fleet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    django_setup()
    args.out.write_text(json.dumps({"machines": seed(machines=args.machines)}))


if __name__ == "__main__":
    main()
