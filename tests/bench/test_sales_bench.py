"""`make bench-sales` in miniature on the suite's PostgreSQL: every report it times, before and after
its indexes, holds what Python sums from the same seeded orders (correctness, not speed)."""

from __future__ import annotations

import datetime
import os
import zoneinfo
from collections import defaultdict
from typing import Any

import pytest

from bench import sales as bench
from devtools.postgres import is_postgres
from payments import sales
from payments.models import Order, OrderStatus

S = OrderStatus
pytestmark = [
    # VACUUM and CREATE INDEX CONCURRENTLY run outside a transaction.
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(120),
    pytest.mark.skipif(not is_postgres(os.environ.get("DATABASE_URL", "")),
                       reason="the sales benchmark's seed is PostgreSQL's SQL: the PostgreSQL pass runs it"),
]
# Taken for good: a hold captured or a single-stage payment (payments.sales.CHARGED, read here on its own).
CHARGED = {S.PAID, S.SUCCESSFUL, S.MANUAL_MAKE, S.REFUND_PENDING, S.REFUNDED, S.REFUND_FAILED}


def python_sums(measured: bench.Measured) -> tuple[list[tuple[Any, ...]], dict[str, int]]:
    """(every row of the selection as (day, machine, figures), newest day first; the totals), from the orders."""
    selection = measured.selection
    orders = Order.objects.filter(test=False).values_list(
        "device_id", "device__device_uuid", "device__time_zone", "merchant_id", "created_at", "status",
        "price_kopecks", "refunded_kopecks", "two_stage")
    rows: dict[tuple[datetime.date, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(
        (column.name for column in sales.COLUMNS), 0))
    for device, machine, zone, merchant, created, status, price, refunded, two_stage in orders:
        day = created.astimezone(zoneinfo.ZoneInfo(zone)).date()
        if not selection.start <= day <= selection.end or measured.staff_of not in (None, merchant):
            continue
        if selection.device_id not in (None, device) or selection.merchant_id not in (None, merchant):
            continue
        row = rows[day, machine]
        row["orders"] += 1
        row["paid"] += status in sales.PAID_STATUSES
        row["made"] += status in (S.SUCCESSFUL, S.MANUAL_MAKE)
        row["refunded"] += refunded > 0
        charged = status in CHARGED or status in (S.MAKE_PENDING, S.MAKE_FAILED) and not two_stage
        row["charged"] += price if charged else 0
        row["refunds"] += refunded
    ordered = sorted(rows.items(), key=lambda item: (-item[0][0].toordinal(), item[0][1]))
    totals = {column.name: sum(figures[column.name] for figures in rows.values()) for column in sales.COLUMNS}
    return [(day, machine, figures) for (day, machine), figures in ordered], totals


def test_each_timed_report_holds_the_orders_sums() -> None:
    lines: list[str] = []
    runs = bench.bench_run(merchants=2, machines=40, days=30, per_day=12, runs=1, printer=lines.append)

    assert lines[0].startswith("seeded 14400 orders of 40 machines, 2 merchants"), lines[0]
    statuses = set(Order.objects.values_list("status", flat=True))
    assert {S.SUCCESSFUL, S.REFUNDED, S.NOT_PAID, S.RELEASED} <= statuses, statuses
    for phase, reports in runs.items():
        assert len(reports) == 4
        for report in reports:
            expected, totals = python_sums(report)
            shown = expected if report.name.startswith("CSV") else expected[:sales.PAGE_ROWS]
            assert report.count == len(expected) > 0, (phase, report.name)
            assert [(row.day, row.machine, row.figures) for row in report.rows] == shown, (phase, report.name)
            assert report.totals.figures == totals, (phase, report.name)
            assert any("Execution Time" in line for line in report.explain), report.explain
    # Each view is a different selection: a superuser's fleet's week, one merchant's, one machine's month,
    # the merchant's month.
    first, merchant, machine, export = runs["after"]
    assert first.count > merchant.count > 0 and export.count > merchant.count
    assert len({row.machine for row in machine.rows}) == 1 and 25 <= machine.count <= 30
