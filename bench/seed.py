"""The bench's database: the demo merchant and machines, plus orders to poll and to pay.

    python -m bench.seed --status-orders 200 --payment-orders 6000   (with the server's DJANGO_* and DATABASE_URL)

Runs in a process of its own with the servers' environment, through the project's own code:
devtools.demo_data (what `manage.py seed_demo` writes) for the merchant and machines,
`services.order_create` for every order (what a QR scan does). Order ids are `<prefix><number>`,
numbered from 1, so the wrk scripts can name them without reading anything back.
"""

from __future__ import annotations

import argparse
import os

STATUS_PREFIX = "bench-status-"
PAYMENT_PREFIX = "bench-pay-"
DEVICE = "demo-machine-lobby"


def django_setup() -> None:
    """Django for a seeding process: the server's settings from the environment it was given."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coffee_payment.settings")
    import django

    django.setup()


def order_id(prefix: str, number: int) -> str:
    # The Lua scripts format ids the same way: string.format("%s%06d", prefix, number).
    return f"{prefix}{number:06d}"


def seed(*, status_orders: int, payment_orders: int) -> None:
    from django.db import transaction

    from devtools.demo_data import demo_seed
    from payments import services

    # Machines and their menus, also in the production layer the bench serves (which has no
    # devtools app). SQLite files are in WAL mode already (conf.py's init_command), and the mode is
    # stored in the file, so every server copy has it.
    demo_seed()
    # One transaction: thousands of scans in a second or two instead of one fsync each.
    with transaction.atomic():
        for prefix, count in ((STATUS_PREFIX, status_orders), (PAYMENT_PREFIX, payment_orders)):
            for number in range(1, count + 1):
                # A medium Cappuccino from the demo menu: name and price come from there.
                services.order_create(order_id=order_id(prefix, number), device_uuid=DEVICE, drink_number=2, size=2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--status-orders", type=int, required=True)
    parser.add_argument("--payment-orders", type=int, required=True)
    args = parser.parse_args(argv)
    django_setup()
    seed(status_orders=args.status_orders, payment_orders=args.payment_orders)


if __name__ == "__main__":
    main()
