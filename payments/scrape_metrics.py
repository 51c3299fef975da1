"""Gauges counted in the database when `/metrics` is scraped: machines by staff's status and
connection (payments.liveness), started orders overdue (payments.vend_window).

Counts of rows, not of a process's events: any worker of any pod answers the same, so they are read
at the scrape (two grouped counts, bounded in time) rather than kept in prometheus_client's
multiprocess files. A database that cannot answer leaves them out; the rest of /metrics stays.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from asgiref.sync import sync_to_async
from django.db import DatabaseError, InterfaceError, connection as database, transaction
from django.db.models import Count
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from payments import liveness
from payments.models import Device, DeviceStatus, Order
from payments.vend_window import make_overdue

log = logging.getLogger(__name__)
# PostgreSQL's statement_timeout for the counts; waiting for a connection is bounded by the pool's
# timeout and connecting by its connect timeout (coffee_payment/conf_values.py).
QUERY_TIMEOUT_MS = 2000


Counts = tuple[dict[tuple[str, str], int], int]


def _counts() -> Counts:
    """((device status, connection) -> machines, started orders overdue): two grouped counts."""
    now = timezone.now()
    # A deactivated machine is out of the fleet: never "offline", never an alert.
    devices = Device.objects.exclude(status=DeviceStatus.DEACTIVATED).annotate(connection=liveness.connection_case(now=now)).values("status", "connection")
    machines = {(row["status"], row["connection"]): row["machines"]
                for row in devices.annotate(machines=Count("pk")).order_by()}
    return machines, Order.objects.filter(make_overdue(now=now)).count()


def _database_counts() -> Counts:
    try:
        # SQLite: no transaction, whose BEGIN IMMEDIATE would take the write lock for a read.
        if database.vendor != "postgresql":
            return _counts()
        with transaction.atomic():
            with database.cursor() as cursor:
                cursor.execute(f"SET LOCAL statement_timeout = {QUERY_TIMEOUT_MS}")
            return _counts()
    finally:
        # The scrape is no request (no request signals close its connection) and runs in a thread of
        # its own: leave no connection behind in it, as the readiness checks do.
        database.close()


class _Families:
    def __init__(self, machines: dict[tuple[str, str], int], overdue: int) -> None:
        self.machines, self.overdue = machines, overdue

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "coffee_machines", "Machines by staff's status and connection: online (called within "
            "DEVICE_OFFLINE_AFTER_SECONDS), offline (silent longer), none (no API token).",
            labels=["status", "connection"])
        # Every series, zeros included: an alert can compare them.
        for status in (status for status in DeviceStatus.values if status != DeviceStatus.DEACTIVATED):
            for state in liveness.Connection:
                gauge.add_metric([status, str(state)], self.machines.get((status, str(state)), 0))
        yield gauge
        yield GaugeMetricFamily(
            "coffee_orders_make_overdue", "Orders started and not reported made or failed within "
            "ORDER_MAKE_TIMEOUT_SECONDS: the staff's to check.", value=self.overdue)


async def database_metrics() -> bytes:
    """The gauges counted in the database, in Prometheus text format; nothing (and a warning) when the
    database cannot answer, so that /metrics still reports everything else."""
    try:
        # Not thread_sensitive: a slow database must not hold the worker's one sync thread.
        counts = await sync_to_async(_database_counts, thread_sensitive=False)()
    except (DatabaseError, InterfaceError) as error:
        log.warning("/metrics without the database's gauges: %s", str(error).strip()[:200] or type(error).__name__)
        return b""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(*counts))  # type: ignore[arg-type]
    return generate_latest(registry)
