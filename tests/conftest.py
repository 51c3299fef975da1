from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from asgiref.sync import SyncToAsync
from django.db import connections

from devtools import postgres
from devtools.processes import BIN, base_environ, run


# Fixtures through which a test reaches the suite's database (pytest-django's, or a server's).
DATABASE_FIXTURES = frozenset({"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback",
                               "migrated_database_template", "migrated_server_database", "server_database"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--database-only", action="store_true",
                     help="run only the tests that use the database (the second, PostgreSQL, pass)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """--database-only: the PostgreSQL pass reruns what the database engine can change, no more."""
    if not config.getoption("--database-only"):
        return
    keep, drop = [], []
    for item in items:
        uses_database = (item.get_closest_marker("django_db") or item.get_closest_marker("database")
                         or DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())))
        (keep if uses_database else drop).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)


@pytest.fixture(autouse=True)
def _close_connections_of_async_tests() -> Iterator[None]:
    """Close what async tests opened in asgiref's sync thread, as Django does after a request.

    An async test's own ORM calls (`aget`, `sync_to_async(...)`) run outside any request, in
    asgiref's one shared sync thread; its connections would otherwise stay open (on PostgreSQL,
    checked out of the pool) and keep the test database from being dropped.
    """
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


@pytest.fixture(scope="session")
def migrated_database_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server database with every migration applied, once per session, to copy from."""
    tmp_path = tmp_path_factory.mktemp("migrated-template")
    with postgres.server_database(tmp_path) as url:
        result = run([str(BIN / "python"), "manage.py", "migrate", "--noinput"],
                     env=base_environ(tmp_path, DATABASE_URL=url))
        assert result.returncode == 0, result.stderr
        yield url


@pytest.fixture
def migrated_server_database(tmp_path: Path, migrated_database_template: str) -> Iterator[str]:
    """DATABASE_URL for a server under test, migrated as a deployed one is (a copy of the template)."""
    with postgres.server_database(tmp_path, template=migrated_database_template) as url:
        yield url
