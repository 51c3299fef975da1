"""A write that finds its row (PostgreSQL) or the database (SQLite) locked by another transaction
waits DATABASE_WAIT_TIMEOUT, then answers 503: never a request hung until its 504 (a real Gunicorn)."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from coffee_payment.conf_values import DATABASE_CONNECT_TIMEOUT
from devtools import postgres
from devtools.processes import BIN, base_environ, gunicorn, run

pytestmark = [pytest.mark.integration, pytest.mark.database, pytest.mark.timeout(90)]

WAIT_TIMEOUT = 1.0
MENU = {"items": [{"drink_number": 1, "size": 1, "drink_name": "Espresso", "price_kopecks": 9900,
                    "available": True}]}


@contextlib.contextmanager
def machine_row_locked(database_url: str, device_uuid: str) -> Iterator[None]:
    """Another transaction holds what the menu upload must lock: the machine's row on PostgreSQL
    (SELECT ... FOR UPDATE), the whole database on SQLite (BEGIN IMMEDIATE)."""
    if postgres.is_postgres(database_url):
        with psycopg.connect(database_url) as connection, connection.transaction():
            connection.execute("SELECT id FROM payments_device WHERE device_uuid = %s FOR UPDATE", [device_uuid])
            yield
        return
    connection = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield
        connection.execute("ROLLBACK")
    finally:
        connection.close()


def test_a_locked_row_answers_503_after_the_database_wait(tmp_path: Path, server_database: str) -> None:
    env = base_environ(tmp_path, DATABASE_URL=server_database, DJANGO_LOG_FORMAT="json", GUNICORN_WORKERS="1",
                       DATABASE_WAIT_TIMEOUT=str(WAIT_TIMEOUT))
    for command in (["migrate", "--noinput"], ["seed_demo", "--machine-tokens"]):
        result = run([str(BIN / "python"), "manage.py", *command], env=env)
        assert result.returncode == 0, result.stderr
    token = re.search(r"^device demo-machine-lobby: machine API token (\S+)$", result.stdout, flags=re.MULTILINE)
    assert token, result.stdout
    machine = {"Authorization": f"Bearer {token.group(1)}"}

    with gunicorn(tmp_path, env=env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/v1/machine/menu", headers=machine).status_code == 200  # warm: connections open
        with machine_row_locked(server_database, "demo-machine-lobby"):
            started = time.monotonic()
            waited = http.put("/v1/machine/menu", json=MENU, headers=machine)
            seconds = time.monotonic() - started
        after = http.put("/v1/machine/menu", json=MENU, headers=machine)
        logs = server.logs()

    assert (waited.status_code, waited.headers.get("retry-after")) == (503, "5"), (waited.status_code, waited.text, logs[-3000:])
    # It waited for the lock, as long as the setting says and not much more.
    assert WAIT_TIMEOUT <= seconds < WAIT_TIMEOUT + DATABASE_CONNECT_TIMEOUT
    assert "the database could not answer PUT /v1/machine/menu" in logs and "Traceback" not in logs
    assert after.status_code == 200 and after.json()["items"][0]["drink_name"] == "Espresso"
