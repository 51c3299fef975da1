from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import postgres


@pytest.fixture
def server_database(tmp_path: Path) -> Iterator[str]:
    """DATABASE_URL for a server under test: the suite's PostgreSQL cluster (a fresh database) or SQLite."""
    with postgres.server_database(tmp_path) as url:
        yield url
