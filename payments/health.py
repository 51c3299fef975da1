"""Readiness checks: what must answer before this pod may take traffic."""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from django.db import DatabaseError, connections

log = logging.getLogger(__name__)


def _database_ping() -> None:
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        # The probe runs in a pool thread of its own: leave no connection behind in it.
        connection.close()


async def database_check(*, timeout: float) -> str | None:
    """None when the database answers within `timeout` seconds, else why it did not."""
    # Not thread_sensitive: a hung database must not hold the worker's one sync thread.
    ping = sync_to_async(_database_ping, thread_sensitive=False)
    try:
        await asyncio.wait_for(ping(), timeout=timeout)
    except TimeoutError:
        log.warning("readiness: database did not answer within %.1f s", timeout)
        return f"no answer within {timeout:g} s"
    except DatabaseError as exc:
        log.warning("readiness: database check failed: %s", exc)
        return f"unavailable ({type(exc).__name__})"
    return None
