"""Machine liveness: when a machine's call is written down, and when a machine counts as offline.

Every authenticated machine API call counts; `Device.last_seen_at` is written at most once per
DEVICE_SEEN_INTERVAL_SECONDS, so the stored time is at most that much older than the last call. A
machine is offline once the stored time is DEVICE_OFFLINE_AFTER_SECONDS plus that interval old: a
machine that called within DEVICE_OFFLINE_AFTER_SECONDS is never refused. A machine without an API
token does not use the API: staff's status alone decides for it.
"""

from __future__ import annotations

import datetime
import enum

from django.conf import settings
from django.db.models import Case, Q, Value, When


class Connection(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    # No API token: nothing to judge by.
    NONE = "none"


def seen_write_due(last_seen_at: datetime.datetime | None, *, now: datetime.datetime) -> bool:
    """Whether a call at `now` must write itself down (the compare-and-set's condition, in Python)."""
    return last_seen_at is None or last_seen_at <= seen_write_cutoff(now=now)


def seen_write_cutoff(*, now: datetime.datetime) -> datetime.datetime:
    return now - datetime.timedelta(seconds=settings.DEVICE_SEEN_INTERVAL_SECONDS)


def offline_cutoff(*, now: datetime.datetime) -> datetime.datetime:
    """A machine last seen at or before this is offline."""
    silence = settings.DEVICE_OFFLINE_AFTER_SECONDS + settings.DEVICE_SEEN_INTERVAL_SECONDS
    return now - datetime.timedelta(seconds=silence)


def device_connection(*, has_token: bool, last_seen_at: datetime.datetime | None, now: datetime.datetime
                      ) -> Connection:
    if not has_token:
        return Connection.NONE
    if last_seen_at is None or last_seen_at <= offline_cutoff(now=now):
        return Connection.OFFLINE
    return Connection.ONLINE


def connection_filter(connection: Connection, *, now: datetime.datetime) -> Q:
    """Devices in `connection`, as a query condition (the admin's filter, the metrics)."""
    seen = Q(last_seen_at__gt=offline_cutoff(now=now))
    return {
        Connection.NONE: Q(credential__isnull=True),
        Connection.ONLINE: Q(credential__isnull=False) & seen,
        Connection.OFFLINE: Q(credential__isnull=False) & ~seen,
    }[connection]


def connection_case(*, now: datetime.datetime) -> Case:
    """Each device's connection as a column, for counting devices by it in one query."""
    return Case(*(When(connection_filter(connection, now=now), then=Value(str(connection)))
                  for connection in (Connection.NONE, Connection.ONLINE)), default=Value(str(Connection.OFFLINE)))
