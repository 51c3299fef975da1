from __future__ import annotations

from collections.abc import Iterator

import pytest
from asgiref.sync import SyncToAsync
from django.db import connections


@pytest.fixture(autouse=True)
def _close_connections_of_async_tests() -> Iterator[None]:
    """Close what async tests opened in asgiref's sync thread, as Django does after a request.

    An async test's own ORM calls (`aget`, `sync_to_async(...)`) run outside any request, in
    asgiref's one shared sync thread; its connections would otherwise stay open (on PostgreSQL,
    checked out of the pool) and keep the test database from being dropped.
    """
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)
