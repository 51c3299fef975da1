"""Gauges read from the database when `/metrics` is scraped: machines by staff's status and
connection (payments.liveness), started orders overdue (payments.vend_window), the oldest order waiting
on the provider, refunds failed, the last successful reconciliation; the alert rules
(deploy/prometheus/alerts.rules.yml) are built on them.

Rows, not a process's events: any worker of any pod answers the same (the reconciliation CronJob's
refunds included), so they are read at the scrape (a few grouped reads on indexed columns, bounded in
time) rather than kept in prometheus_client's multiprocess files. A database that cannot answer leaves
them out and sets `coffee_database_up` to 0; the rest of /metrics stays.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.db import DatabaseError, InterfaceError, connection as database, transaction
from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from payments import liveness
from payments.models import (MONEY_PENDING_STATUSES, Device, DeviceStatus, JobSuccess, Order, OrderStatus,
                             OrphanPayment, OrphanPaymentStatus)
from payments.reconciliation import RECONCILIATION_JOB
from payments.vend_window import make_overdue

log = logging.getLogger(__name__)
# PostgreSQL's statement_timeout for the counts; waiting for a connection is bounded by the pool's
# timeout and connecting by its connect timeout (coffee_payment/conf_values.py).
QUERY_TIMEOUT_MS = 2000


# Orders whose next step is the provider's answer: the customer's payment, or our capture, release or refund.
PROVIDER_WAIT_STATUSES = (OrderStatus.PENDING, *sorted(MONEY_PENDING_STATUSES))


@dataclass
class Counts:
    # (device status, connection) -> machines
    machines: dict[tuple[str, str], int]
    overdue: int
    # status -> seconds since the oldest order in it last changed (absent: none in it)
    provider_waits: dict[str, float]
    # source (order, orphan_payment) -> refunds failed, ever
    refunds_failed: dict[str, int]
    # Unix time of the last successful reconciliation run; 0 when none is recorded.
    reconciled_at: float


def _counts() -> Counts:
    now = timezone.now()
    # A deactivated machine is out of the fleet: never "offline", never an alert.
    devices = Device.objects.exclude(status=DeviceStatus.DEACTIVATED).annotate(connection=liveness.connection_case(now=now)).values("status", "connection")
    machines = {(row["status"], row["connection"]): row["machines"]
                for row in devices.annotate(machines=Count("pk")).order_by()}
    # Index order_status_updated: per status, its oldest updated_at.
    waiting = Order.objects.filter(status__in=PROVIDER_WAIT_STATUSES).values("status").annotate(
        oldest=Min("updated_at")).order_by()
    success = JobSuccess.objects.filter(name=RECONCILIATION_JOB).values_list("succeeded_at", flat=True).first()
    return Counts(
        machines=machines,
        overdue=Order.objects.filter(make_overdue(now=now)).count(),
        provider_waits={row["status"]: (now - row["oldest"]).total_seconds() for row in waiting},
        refunds_failed={
            "order": Order.objects.filter(status=OrderStatus.REFUND_FAILED).count(),
            "orphan_payment": OrphanPayment.objects.filter(status=OrphanPaymentStatus.RETURN_FAILED).count(),
        },
        reconciled_at=success.timestamp() if success else 0.0,
    )


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
    def __init__(self, counts: Counts | None) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self.counts
        yield GaugeMetricFamily("coffee_database_up", "1 when the database answered this scrape's reads, else 0.",
                                value=int(counts is not None))
        if counts is None:
            return
        gauge = GaugeMetricFamily(
            "coffee_machines", "Machines by staff's status and connection: online (called within "
            "DEVICE_OFFLINE_AFTER_SECONDS), offline (silent longer), none (no API token).",
            labels=["status", "connection"])
        # Every series, zeros included: an alert can compare them.
        for status in (status for status in DeviceStatus.values if status != DeviceStatus.DEACTIVATED):
            for state in liveness.Connection:
                gauge.add_metric([status, str(state)], counts.machines.get((status, str(state)), 0))
        yield gauge
        yield GaugeMetricFamily(
            "coffee_orders_make_overdue", "Orders started and not reported made or failed within "
            "ORDER_MAKE_TIMEOUT_SECONDS: the staff's to check.", value=counts.overdue)
        waits = GaugeMetricFamily(
            "coffee_orders_provider_wait_oldest_seconds", "Seconds since the oldest order waiting on the provider "
            "(pending: the customer's payment; capture, cancel, refund_pending: ours) last changed; 0: none.",
            labels=["status"])
        for status in PROVIDER_WAIT_STATUSES:
            waits.add_metric([str(status)], counts.provider_waits.get(status, 0.0))
        yield waits
        failed = GaugeMetricFamily(
            "coffee_refunds_failed", "Money the provider refused to return, ever: orders in refund_failed "
            "(source order), orphan payments in return_failed (orphan_payment). Staff return it.", labels=["source"])
        for source, count in counts.refunds_failed.items():
            failed.add_metric([source], count)
        yield failed
        yield GaugeMetricFamily(
            "coffee_reconciliation_last_success_timestamp_seconds", "Unix time of the last `manage.py "
            "reconcile_payments` run that exited 0; 0: none recorded.", value=counts.reconciled_at)


async def database_metrics() -> bytes:
    """The gauges read from the database, in Prometheus text format; only `coffee_database_up 0` (and a
    warning) when the database cannot answer, so that /metrics still reports everything else."""
    try:
        # Not thread_sensitive: a slow database must not hold the worker's one sync thread.
        counts = await sync_to_async(_database_counts, thread_sensitive=False)()
    except (DatabaseError, InterfaceError) as error:
        log.warning("/metrics without the database's gauges: %s", str(error).strip()[:200] or type(error).__name__)
        counts = None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(counts))  # type: ignore[arg-type]
    return generate_latest(registry)
