"""`make bench-sales`: the admin's sales report on a year of a fleet's orders, on PostgreSQL.

    python -m bench.sales --machines 4000 --days 365 --per-day 12 --runs 5

A throwaway cluster (devtools/postgres.py), migrated; then set-based SQL (INSERT ... SELECT
generate_series, a statement per day, oldest first as orders arrive) seeds --merchants merchants,
--machines machines in five Russian time zones and --per-day orders a machine a day over the last
--days days in mixed final states (some refunded, some in part), then VACUUM ANALYZE. Each report
is built as the admin builds it (SalesFilterForm from the page's query, SalesAdmin's queryset for
its user) and timed through payments.sales: the median of --runs runs, then the EXPLAIN (ANALYZE,
BUFFERS) summary of its one statement.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.seed import django_setup

ZONES = ("Europe/Kaliningrad", "Europe/Moscow", "Asia/Yekaterinburg", "Asia/Novosibirsk", "Asia/Vladivostok")
DEVICE_PREFIX = "sales-machine-"
# (upper bound of a uniform draw, status, refunded share of the price, two-stage): abandoned scans,
# failures, drinks made, refunds in full and in part, holds released.
OUTCOMES = ((0.05, "not_paid", 0, False), (0.07, "created", 0, False), (0.08, "failed", 0, False),
            (0.86, "successful", 0, False), (0.87, "successful", 0.5, False), (0.91, "refunded", 1, False),
            (0.92, "refund_failed", 0, False), (0.94, "manual_make", 0, False), (0.96, "released", 0, True),
            (0.97, "make_failed", 0, False), (1.0, "paid", 0, False))
PRICES = (9900, 15900, 18900, 22900)
# The indexes the report's days need (payments.Order.Meta, migration 0011): dropped for the "before"
# figures, then built again, timed, for the "after" ones of the same run.
SALES_INDEXES = ("order_created", "order_merchant_created")
EXPLAINED = ("Scan", "Execution Time", "Planning Time", "Sort Method", "HashAggregate", "GroupAggregate")


@dataclass(frozen=True)
class Fleet:
    merchants: list[int]
    devices: list[int]
    orders: int
    seconds: float


@dataclass(frozen=True)
class Measured:
    name: str
    selection: Any  # payments.sales.Selection
    staff_of: int | None  # the merchant whose staff looked; None: a superuser
    median: float
    times: list[float]
    rows: list[Any]  # payments.sales.Row
    count: int
    totals: Any
    explain: list[str]


def fleet_seed(*, merchants: int, machines: int, days: int, per_day: int, end: datetime.datetime) -> Fleet:
    """The fleet and its orders of the `days` days before `end`, in the current database."""
    from django.db import connection, transaction

    from payments.models import Device, Merchant

    started = time.monotonic()
    with transaction.atomic():
        owners = Merchant.objects.bulk_create(
            Merchant(name=f"Sales Coffee {number}", contact_email=f"sales{number}@example.com",
                     shop_id=f"sales-shop-{number}", active_until=end.date() + datetime.timedelta(days=365))
            for number in range(1, merchants + 1))
        owner_ids = [merchant.pk for merchant in owners]
        zones = "ARRAY[" + ", ".join(f"'{zone}'" for zone in ZONES) + "]"
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO payments_device (device_uuid, merchant_id, location, status, brand_name, logo_url, "
                "welcome_text, thank_you_text, time_zone, created_at) "
                f"SELECT %s || lpad(n::text, 5, '0'), (%s::bigint[])[1 + (n - 1) %% %s], 'Sales ' || n, 'online', "
                f"'', '', '', '', ({zones})[1 + (n - 1) %% {len(ZONES)}], %s "
                "FROM generate_series(1, %s) n", [DEVICE_PREFIX, owner_ids, merchants, end, machines])
    fleet = Device.objects.filter(device_uuid__startswith=DEVICE_PREFIX).order_by("pk")
    devices = list(fleet.values_list("pk", flat=True))
    status = "CASE " + " ".join(f"WHEN r < {bound} THEN '{name}'" for bound, name, _, _ in OUTCOMES) + " END"
    refunded = "CASE " + " ".join(f"WHEN r < {bound} THEN {share}" for bound, _, share, _ in OUTCOMES) + " END"
    two_stage = "CASE " + " ".join(f"WHEN r < {bound} THEN {held}" for bound, _, _, held in OUTCOMES) + " END"
    prices = "ARRAY[" + ", ".join(map(str, PRICES)) + "]"
    orders = 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(0.2026)")
        for day in range(days, 0, -1):
            # A day's orders of every machine at random moments of the UTC day: across local midnights.
            cursor.execute(
                "INSERT INTO payments_order (id, device_id, merchant_id, drink_number, drink_name, size, "
                "price_kopecks, test, status, expires_at, two_stage, refund_status, refunded_kopecks, paid_at, "
                "created_at, updated_at) "
                "SELECT to_char(at, 'YYYYMMDDHH24MISS') || '-' || device_id || '-' || k, device_id, merchant_id, 2, "
                f"'Cappuccino', 2, price, false, {status}, at + interval '15 minutes', {two_stage}, '', "
                f"round(price * ({refunded}))::int, at + interval '1 minute', at, at + interval '3 minutes' "
                "FROM (SELECT d.id AS device_id, d.merchant_id, k, random() AS r, "
                f"({prices})[1 + floor(random() * {len(PRICES)})::int] AS price, "
                "%s::timestamptz - make_interval(days => %s) + random() * interval '1 day' AS at "
                "FROM payments_device d, generate_series(1, %s) k WHERE d.device_uuid LIKE %s) s",
                [end, day, per_day, DEVICE_PREFIX + "%"])
            orders += cursor.rowcount
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) payments_order")
        cursor.execute("ANALYZE payments_device")
    return Fleet(merchants=owner_ids, devices=devices, orders=orders, seconds=time.monotonic() - started)


def _users(fleet: Fleet) -> tuple[Any, Any]:
    """A superuser, and a staff user of the first merchant."""
    from django.contrib.auth import get_user_model

    from payments.models import Merchant

    users = get_user_model().objects
    boss = users.filter(username="sales-boss").first() or users.create_superuser("sales-boss", "boss@example.com", "x")
    staff = users.filter(username="sales-staff").first() or users.create_user("sales-staff", is_staff=True)
    Merchant.objects.get(pk=fleet.merchants[0]).staff.add(staff)
    return boss, staff


def _explain(sql: str, params: list[Any]) -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
        plan = [line for (line,) in cursor.fetchall()]
    # The plan's root and its buffers, what it scanned, how it sorted and grouped, and its times.
    root = plan[:2] if len(plan) > 1 and plan[1].strip().startswith("Buffers") else plan[:1]
    return [*root, *(line for line in plan[len(root):] if any(word in line for word in EXPLAINED))]


def report_measure(name: str, user: Any, query: dict[str, str], *, export: bool, runs: int) -> Measured:
    """The report for `user` and the page's `query`, as SalesAdmin makes it (the first page, or the CSV)."""
    from django.contrib import admin
    from django.test import RequestFactory

    from payments import sales
    from payments.admin_mixins import merchants_of
    from payments.admin_sales import SalesFilterForm, sales_csv
    from payments.models import Sales

    model_admin = admin.site._registry[Sales]
    request = RequestFactory().get("/admin/payments/sales/", query)
    request.user = user
    form = SalesFilterForm(request.GET, user=user, admin_site=admin.site)
    assert form.is_valid(), form.errors
    selection, orders = form.selection(), model_admin.get_queryset(request)

    def once() -> tuple[list[Any], int, Any]:
        if export:
            rows, totals = sales.sales_export(orders, selection)
            sales_csv(rows)
            return rows, len(rows), totals
        page = sales.sales_page(orders, selection, page=1)
        return page.rows, page.count, page.totals

    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = once()
        times.append(time.perf_counter() - started)
    assert result is not None
    limit = sales.EXPORT_MAX_ROWS + 1 if export else sales.PAGE_ROWS
    sql, params = sales._statement(orders, selection, limit=limit, offset=0)
    staff_of = None if user.is_superuser else merchants_of(user).get().pk
    return Measured(name=name, selection=selection, staff_of=staff_of, median=statistics.median(times), times=times,
                    rows=result[0], count=result[1], totals=result[2], explain=_explain(sql, params))


def reports(fleet: Fleet, *, today: datetime.date, runs: int) -> list[Measured]:
    """The report's four usual views: every merchant's last week, one merchant's (its staff's), one
    machine's month, and a merchant's month as CSV."""
    boss, staff = _users(fleet)
    month = {"start": (today - datetime.timedelta(days=29)).isoformat(), "end": today.isoformat()}
    cases: list[tuple[str, Any, dict[str, str], bool]] = [
        ("first page, default filters (superuser)", boss, {}, False),
        ("a merchant's first page (its staff)", staff, {}, False),
        ("one machine, a month", boss, {**month, "machine": str(fleet.devices[0])}, False),
        ("CSV, a merchant's month (its staff)", staff, month, True),
    ]
    return [report_measure(name, user, query, export=export, runs=runs) for name, user, query, export in cases]


def indexes_drop() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for name in SALES_INDEXES:
            cursor.execute(f'DROP INDEX IF EXISTS "{name}"')


def indexes_build() -> float:
    """Seconds to build SALES_INDEXES as migration 0011 does (CREATE INDEX CONCURRENTLY), then ANALYZE."""
    from django.db import connection

    from payments.models import Order

    started = time.monotonic()
    with connection.schema_editor(atomic=False) as editor:
        for index in Order._meta.indexes:
            if index.name in SALES_INDEXES:
                editor.add_index(Order, index, concurrently=True)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE payments_order")
    return time.monotonic() - started


def _print(heading: str, results: list[Measured], printer: Callable[[str], None]) -> None:
    printer(f"\n== {heading}")
    for result in results:
        printer(f"\n{result.name}: median {result.median * 1000:.0f} ms of {len(result.times)} "
                f"({', '.join(f'{t * 1000:.0f}' for t in result.times)} ms); {result.count} rows")
        for line in result.explain:
            printer(f"    {line}")


def bench_run(*, merchants: int, machines: int, days: int, per_day: int, runs: int,
              printer: Callable[[str], None]) -> dict[str, list[Measured]]:
    """Seed the current (migrated, empty) database and measure the reports without and with SALES_INDEXES."""
    from django.utils import timezone

    from payments.models import DEFAULT_DEVICE_TIME_ZONE

    now = timezone.now()
    # Seeded without the report's indexes (as before migration 0011): quicker, and the "before".
    indexes_drop()
    fleet = fleet_seed(merchants=merchants, machines=machines, days=days, per_day=per_day, end=now)
    printer(f"seeded {fleet.orders} orders of {len(fleet.devices)} machines, {len(fleet.merchants)} merchants "
            f"in {fleet.seconds:.1f} s (with VACUUM ANALYZE)")
    # The report's default days end on today in the default zone (SalesFilterForm).
    today = timezone.localdate(now, timezone=zoneinfo.ZoneInfo(DEFAULT_DEVICE_TIME_ZONE))
    before = reports(fleet, today=today, runs=runs)
    _print(f"without {', '.join(SALES_INDEXES)}", before, printer)
    built = indexes_build()
    after = reports(fleet, today=today, runs=runs)
    _print(f"with them (built concurrently in {built:.1f} s)", after, printer)
    return {"before": before, "after": after}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merchants", type=int, default=4)
    parser.add_argument("--machines", type=int, default=4000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--per-day", type=int, default=12, help="orders a machine a day")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each report (the median is shown)")
    args = parser.parse_args(argv)
    from devtools import postgres

    with postgres.cluster() as url:
        # This process is the report's only client: Django on the throwaway cluster.
        os.environ.update(DATABASE_URL=url, DJANGO_ENV="testing")
        django_setup()
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", interactive=False, verbosity=0)
        bench_run(merchants=args.merchants, machines=args.machines, days=args.days, per_day=args.per_day,
                  runs=args.runs, printer=lambda line: print(line, flush=True))
        connections.close_all()


if __name__ == "__main__":
    main()
