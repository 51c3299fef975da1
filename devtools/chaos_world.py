"""The chaos run's database side, run in a process of its own with the server's environment:

    python -m devtools.chaos_world seed --machines 8    # merchants, machines, menus; prints their tokens
    python -m devtools.chaos_world settle --ahead 65     # reconcile as a run that many seconds later would
    python -m devtools.chaos_world dump                  # the orders and orphan payments, as JSON

Three merchants, each its own provider shop: single-stage, two-stage (holds) and SBP only.
`settle` is `manage.py reconcile_payments` (the vend windows, the due orders, the provider's list)
with its clock `--ahead` seconds on: what waited ORDER_RECONCILE_AFTER_MINUTES is due at once, so
that a short run settles in seconds what a real one settles in minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
from collections import Counter
from typing import Any

SINGLE, TWO_STAGE, SBP = "chaos-single", "chaos-hold", "chaos-sbp"
SHOPS = (SINGLE, TWO_STAGE, SBP)


def shop_secrets() -> dict[str, str]:
    """The shops' keys: what PAYMENT_PROVIDER_SECRETS and the fake provider's --credentials say."""
    return {shop: f"{shop}-secret" for shop in SHOPS}


def world_seed(*, machines: int) -> dict[str, Any]:
    """The merchants and `machines` machines, dealt round the shops: each machine's uuid, shop and
    token, and the (drink number, size) pairs of their menu."""
    from django.utils import timezone

    from devtools.demo_data import MENU_ENTRIES
    from payments import services
    from payments.models import Device, DeviceStatus, Merchant, PaymentMethods

    year = timezone.localdate() + datetime.timedelta(days=365)
    merchants = {
        shop: Merchant.objects.create(name=f"Chaos {shop}", contact_email="chaos@example.com", active_until=year,
                                      shop_id=shop, two_stage_payments=shop == TWO_STAGE,
                                      payment_methods=PaymentMethods.SBP if shop == SBP else PaymentMethods.ANY)
        for shop in SHOPS
    }
    fleet = []
    for number in range(machines):
        shop = SHOPS[number % len(SHOPS)]
        device = Device.objects.create(device_uuid=f"chaos-machine-{number:02d}", merchant=merchants[shop],
                                       location=f"Chaos {number}", status=DeviceStatus.ONLINE)
        services.device_menu_replace(device_id=device.pk, entries=MENU_ENTRIES)
        token = services.device_credential_issue(device_id=device.pk)
        fleet.append({"device": device.device_uuid, "shop": shop, "token": token})
    return {"machines": fleet, "drinks": [(entry.drink_number, entry.size) for entry in MENU_ENTRIES]}


async def world_settle(*, ahead: float) -> Counter[str]:
    """One reconciliation run, its clock `ahead` seconds on (as reconcile_payments runs it)."""
    from asgiref.sync import sync_to_async
    from django.db import connections
    from django.utils import timezone

    from payments import provider
    from payments.reconciliation import orders_reconcile
    from payments.vend_window import make_windows_check

    now = timezone.now() + datetime.timedelta(seconds=ahead)
    try:
        outcomes = await make_windows_check(now=now)
        outcomes.update(await orders_reconcile(now=now))
        return outcomes
    finally:
        await provider.aclose()
        await sync_to_async(connections.close_all)()


def world_dump() -> dict[str, Any]:
    """What the ledger compares with the provider: every order's money fields and every orphan payment."""
    from payments.models import Order, OrphanPayment

    orders = Order.objects.order_by("pk").values(
        "id", "status", "price_kopecks", "two_stage", "provider_payment_id", "refund_id", "refund_status",
        "refunded_kopecks", "merchant__shop_id", "device__device_uuid")
    overdue = set(Order.objects.filter(make_overdue_at__isnull=False).values_list("pk", flat=True))
    orphans = OrphanPayment.objects.order_by("provider_payment_id").values(
        "provider_payment_id", "shop_id", "order_id", "amount_kopecks", "status", "refund_id")
    return {"orders": [{**order, "make_overdue": order["id"] in overdue} for order in orders],
            "orphans": list(orphans)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.chaos_world", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("seed").add_argument("--machines", type=int, required=True)
    commands.add_parser("settle").add_argument("--ahead", type=float, required=True)
    commands.add_parser("dump")
    args = parser.parse_args(argv)
    import django

    django.setup()
    if args.command == "seed":
        print(json.dumps(world_seed(machines=args.machines)))
    elif args.command == "settle":
        outcomes = asyncio.run(world_settle(ahead=args.ahead))
        print(json.dumps(dict(outcomes)))
        return 1 if any(outcome.startswith("error") for outcome in outcomes) else 0
    else:
        print(json.dumps(world_dump(), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
