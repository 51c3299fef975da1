"""Readiness checks: what must answer before this pod may take traffic."""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from django.db import DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor

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


# Once every migration is applied it stays so for this process (migrations run before a rollout,
# never backwards under a running server): the probe stops asking.
_migrations_applied = False


def _unapplied_migrations() -> list[str]:
    connection = connections["default"]
    try:
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    finally:
        connection.close()
    return [f"{migration.app_label}.{migration.name}" for migration, backwards in plan if not backwards]


async def migrations_check(*, timeout: float) -> str | None:
    """None when every migration is applied, else how many are not: the code would query tables
    or columns that do not exist yet (the first request would get 500 "no such table")."""
    global _migrations_applied
    if _migrations_applied:
        return None
    unapplied = sync_to_async(_unapplied_migrations, thread_sensitive=False)
    try:
        pending = await asyncio.wait_for(unapplied(), timeout=timeout)
    except TimeoutError:
        log.warning("readiness: the migration check got no answer within %.1f s", timeout)
        return f"no answer within {timeout:g} s"
    except DatabaseError as exc:
        log.warning("readiness: the migration check failed: %s", exc)
        return f"unavailable ({type(exc).__name__})"
    if pending:
        log.warning("readiness: %d migration(s) not applied, first %s", len(pending), pending[0])
        return f"{len(pending)} not applied (first: {pending[0]}); run manage.py migrate"
    _migrations_applied = True
    return None
