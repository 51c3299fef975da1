"""Sales per machine and per day in the machine's own time zone, summed by the database.

One query a page: the orders of the chosen days, grouped by machine and local day, with the window
functions of the same statement giving the number of rows and the totals of the whole selection. The
local day is the row's own: PostgreSQL converts `created_at` with the machine's `time_zone` column
(`timezone(zone, created_at)`, i.e. AT TIME ZONE); SQLite has no time zones, so each connection gets
a function that does the same in Python with zoneinfo (`coffee_local_date`). Amounts stay whole
kopecks until they are shown. The report in the admin: docs/operations.md, "Back office".
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import time
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import OperationalError, connections, transaction
from django.db.models import Count, DateField, Expression, F, Func, Q, QuerySet, Sum
from django.utils.module_loading import import_string
from django.utils.translation import gettext_lazy as _

from payments.models import Order, OrderStatus

S = OrderStatus
# The provider confirmed the customer's payment (taken or held), whatever happened next.
PAID_STATUSES = frozenset(S) - {S.CREATED, S.PENDING, S.NOT_PAID, S.FAILED}
MADE_STATUSES = frozenset({S.SUCCESSFUL, S.MANUAL_MAKE})
# The money was taken for good (a hold that was captured, or a single-stage payment); holds still
# waiting and holds released are not.
CHARGED = Q(status__in={S.PAID, S.SUCCESSFUL, S.MANUAL_MAKE, S.REFUND_PENDING, S.REFUNDED, S.REFUND_FAILED}) | Q(
    status__in={S.MAKE_PENDING, S.MAKE_FAILED}, two_stage=False)
# UTC offsets run from -12 to +14 hours: the orders of a local day lie within these bounds of its UTC day.
_EARLIEST_OFFSET, _LATEST_OFFSET = datetime.timedelta(hours=14), datetime.timedelta(hours=12)
PAGE_ROWS = 100
# The CSV holds at most this many rows (a year of 270 machines); a wider selection is refused, named.
EXPORT_MAX_ROWS = 100_000
# What a statement may use of the request's remaining time (PostgreSQL's statement_timeout).
_DEADLINE_MARGIN = 1.0


@dataclass(frozen=True)
class Column:
    """One figure per machine and day: its aggregate over the day's orders, summed again for the totals.
    A figure added here (e.g. a ledger's refunds) reaches the page, the totals and the CSV."""

    name: str
    label: Any
    aggregate: Expression
    money: bool = False


COLUMNS = (
    Column("orders", _("orders"), Count("pk")),
    Column("paid", _("paid"), Count("pk", filter=Q(status__in=PAID_STATUSES))),
    Column("made", _("made"), Count("pk", filter=Q(status__in=MADE_STATUSES))),
    Column("refunded", _("refunded"), Count("pk", filter=Q(refunded_kopecks__gt=0))),
    Column("charged", _("charged, ₽"), Sum("price_kopecks", filter=CHARGED, default=0), money=True),
    Column("refunds", _("refunds, ₽"), Sum("refunded_kopecks", default=0), money=True),
)
# Revenue net of refunds: charged less refunded, per row and in the totals.
REVENUE_LABEL = _("revenue, ₽")


class MachineLocalDate(Func):
    """The calendar day of a timestamp in a time zone named by another column."""

    output_field = DateField()

    def __init__(self, timestamp: str, zone: str) -> None:
        super().__init__(F(timestamp), F(zone))

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list[Any]]:
        timestamp, zone = (compiler.compile(expression) for expression in self.get_source_expressions())
        return f"(timezone({zone[0]}, {timestamp[0]}))::date", [*zone[1], *timestamp[1]]

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list[Any]]:
        return self.as_sql(compiler, connection, function="coffee_local_date", **extra)


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def sqlite_local_date(timestamp: str | None, zone: str | None) -> str | None:
    """coffee_local_date(created_at, time_zone) on SQLite: Django stores UTC as "YYYY-MM-DD HH:MM:SS[.ffffff]"."""
    if timestamp is None or zone is None:
        return None
    moment = datetime.datetime.fromisoformat(timestamp).replace(tzinfo=datetime.UTC)
    return moment.astimezone(_zone(zone)).date().isoformat()


def sqlite_functions_install(*, sender: Any, connection: Any, **kwargs: Any) -> None:
    """connection_created: give each new SQLite connection coffee_local_date."""
    if connection.vendor == "sqlite":
        connection.connection.create_function("coffee_local_date", 2, sqlite_local_date, deterministic=True)


@dataclass(frozen=True)
class Selection:
    """What the sales show: local days from `start` to `end` (inclusive), optionally one merchant's
    orders or one machine's."""

    start: datetime.date
    end: datetime.date
    merchant_id: int | None = None
    device_id: int | None = None


@dataclass(frozen=True)
class Row:
    day: datetime.date | None  # None: the totals
    device_id: int | None
    machine: str
    location: str
    zone: str
    figures: dict[str, int]

    @property
    def revenue(self) -> int:
        return self.figures["charged"] - self.figures["refunds"]


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    count: int  # rows of the whole selection
    totals: Row


class SalesTooSlow(Exception):
    """The database could not sum the selection before the request's deadline."""


def _grouped(orders: QuerySet[Order], selection: Selection) -> QuerySet[Order]:
    lower = datetime.datetime.combine(selection.start, datetime.time.min, datetime.UTC) - _EARLIEST_OFFSET
    upper = datetime.datetime.combine(selection.end + datetime.timedelta(days=1), datetime.time.min,
                                      datetime.UTC) + _LATEST_OFFSET
    # Test machines take no real money: never sales.
    chosen = orders.filter(test=False, created_at__gte=lower, created_at__lt=upper)
    if selection.merchant_id is not None:
        chosen = chosen.filter(merchant_id=selection.merchant_id)
    if selection.device_id is not None:
        chosen = chosen.filter(device_id=selection.device_id)
    return (chosen.annotate(day=MachineLocalDate("created_at", "device__time_zone"), machine=F("device__device_uuid"),
                            location=F("device__location"), zone=F("device__time_zone"))
            .filter(day__gte=selection.start, day__lte=selection.end)
            .order_by().values("device_id", "machine", "location", "zone", "day")
            .annotate(**{column.name: column.aggregate for column in COLUMNS}))


def _statement(orders: QuerySet[Order], selection: Selection, *, limit: int, offset: int) -> tuple[str, list[Any]]:
    inner, params = _grouped(orders, selection).query.sql_with_params()
    names = [column.name for column in COLUMNS]
    totals = ", ".join(f"SUM(g.{name}) OVER () AS total_{name}" for name in names)
    return (f"SELECT g.device_id, g.machine, g.location, g.zone, g.day, {', '.join(f'g.{name}' for name in names)}, "
            f"COUNT(*) OVER () AS total_rows, {totals} FROM ({inner}) g "
            f"ORDER BY g.day DESC, g.machine LIMIT %s OFFSET %s", [*params, limit, offset])


def _statement_timeout_ms() -> int | None:
    deadline = import_string(settings.REQUEST_DEADLINE_CALLABLE)()
    if deadline is None:
        return None
    return max(100, int((deadline - time.monotonic() - _DEADLINE_MARGIN) * 1000))


def _day(value: Any) -> datetime.date:
    return value if isinstance(value, datetime.date) else datetime.date.fromisoformat(str(value))


def _fetch(orders: QuerySet[Order], selection: Selection, *, limit: int, offset: int) -> tuple[list[Row], int, Row]:
    sql, params = _statement(orders, selection, limit=limit, offset=offset)
    connection = connections[orders.db]
    names = [column.name for column in COLUMNS]
    postgresql = connection.vendor == "postgresql"
    # SQLite: no transaction, whose BEGIN IMMEDIATE would take the write lock for a read (and no
    # statement timeout: its reads are bounded by the request's 504 alone).
    bounded = transaction.atomic(using=orders.db) if postgresql else contextlib.nullcontext()
    try:
        with bounded, connection.cursor() as cursor:
            timeout = _statement_timeout_ms() if postgresql else None
            if timeout is not None:
                cursor.execute(f"SET LOCAL statement_timeout = {timeout}")
            cursor.execute(sql, params)
            fetched = cursor.fetchall()
    except OperationalError as error:
        if "statement timeout" in str(error):
            raise SalesTooSlow from error
        raise
    rows, count = [], 0
    totals = Row(day=None, device_id=None, machine="", location="", zone="", figures=dict.fromkeys(names, 0))
    for record in fetched:
        device_id, machine, location, zone, day, *values = record
        figures, count = values[:len(names)], int(values[len(names)])
        rows.append(Row(day=_day(day), device_id=device_id, machine=machine, location=location, zone=zone,
                        figures={name: int(value) for name, value in zip(names, figures)}))
    if fetched:  # every record carries the selection's totals: the last one's
        # SUM() OVER () of integers is a numeric on PostgreSQL: back to int, exactly.
        totals = Row(day=None, device_id=None, machine="", location="", zone="",
                     figures={name: int(value) for name, value in zip(names, fetched[-1][5 + len(names) + 1:])})
    return rows, count, totals


def sales_page(orders: QuerySet[Order], selection: Selection, *, page: int) -> Page:
    """Page `page` (from 1) of the selection's rows, newest day first, with the selection's totals."""
    rows, count, totals = _fetch(orders, selection, limit=PAGE_ROWS, offset=(page - 1) * PAGE_ROWS)
    if not rows and page > 1:  # past the last page: its count and totals still come from one query
        _, count, totals = _fetch(orders, selection, limit=1, offset=0)
    return Page(rows=rows, count=count, totals=totals)


class ExportTooLarge(Exception):
    def __init__(self, rows: int) -> None:
        super().__init__(rows)
        self.rows = rows


def sales_export(orders: QuerySet[Order], selection: Selection) -> tuple[list[Row], Row]:
    """Every row of the selection and its totals; ExportTooLarge past EXPORT_MAX_ROWS rows."""
    rows, count, totals = _fetch(orders, selection, limit=EXPORT_MAX_ROWS + 1, offset=0)
    if count > EXPORT_MAX_ROWS:
        raise ExportTooLarge(count)
    return rows, totals


def rubles(kopecks: int) -> Decimal:
    """Exact: 159000 -> Decimal('1590.00')."""
    return Decimal(kopecks).scaleb(-2)


def row_values(row: Row) -> Iterator[int | Decimal]:
    """The row's figures in COLUMNS' order, amounts in roubles, then its revenue."""
    for column in COLUMNS:
        value = row.figures[column.name]
        yield rubles(value) if column.money else value
    yield rubles(row.revenue)
