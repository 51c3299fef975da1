"""A server whose database cannot answer: 503 with Retry-After, never a 500 (a real Gunicorn)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from coffee_payment.conf_values import DATABASE_CONNECT_TIMEOUT
from devtools.processes import base_environ, free_port, gunicorn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
WAIT_TIMEOUT = 1.0


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_database_that_cannot_answer_is_503_with_retry_after(tmp_path: Path, database: str) -> None:
    """SQLite in a directory that does not exist; PostgreSQL on a port nobody listens on (its pool
    gives up after DATABASE_WAIT_TIMEOUT). The poll gets JSON, a browser's page the error page,
    `/ready` 503, `/health` 200 and `/metrics` 200; the log says which request the database failed,
    in one JSON line."""
    url = (f"sqlite:///{tmp_path / 'missing' / 'db.sqlite3'}" if database == "sqlite"
           else f"postgres://coffee@127.0.0.1:{free_port()}/coffee")
    env = base_environ(tmp_path, DATABASE_URL=url, DJANGO_LOG_FORMAT="json", GUNICORN_WORKERS="1",
                       DATABASE_WAIT_TIMEOUT=str(WAIT_TIMEOUT))
    with gunicorn(tmp_path, env=env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        poll = http.get("/v1/order-status/order-1")
        browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8", "Accept-Language": "ru"}
        page = http.get("/v1/orders/order-1", headers=browser)
        ready, health = http.get("/ready"), http.get("/health")
        metrics = httpx.get(server.metrics_url, timeout=30)
        stderr = server.stderr.read_text().splitlines()

    assert (poll.status_code, poll.headers["retry-after"]) == (503, "5")
    # The pool's wait, and the one failed connection attempt libpq bounds by its connect timeout.
    assert poll.elapsed.total_seconds() < WAIT_TIMEOUT + DATABASE_CONNECT_TIMEOUT
    assert poll.json() == {"error": "Payments cannot be taken for a moment. Please try again in a minute."}
    assert (page.status_code, page.headers["retry-after"]) == (503, "5")
    assert page.headers["content-type"].startswith("text/html") and "Оплата сейчас недоступна" in page.text
    assert (ready.status_code, health.status_code) == (503, 200)
    # /metrics answers without the gauges it counts in the database, and says so once in the log.
    assert metrics.status_code == 200 and "coffee_http_request_duration_seconds" in metrics.text
    assert "coffee_machines" not in metrics.text
    records = [json.loads(line) for line in stderr]  # every line JSON
    failed = [r["message"] for r in records if r["logger"] == "payments.middleware"]
    assert failed[0].startswith("the database could not answer GET /v1/order-status/order-1: ")
    assert len(failed) == 2 and "Traceback" not in "".join(stderr)
    # One ERROR line per failed request: Django's own "Service Unavailable" line is not repeated.
    assert [r["message"][:40] for r in records if r["level"] == "ERROR"] == [m[:40] for m in failed]
    assert [r["message"] for r in records if r["logger"] == "payments.scrape_metrics"][0].startswith(
        "/metrics without the database's gauges: ")
