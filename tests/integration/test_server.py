"""A real `gunicorn -c config/gunicorn.py` on a loopback port (R1, R2, R6)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from django.conf import settings as django_settings

from devtools.processes import BIN, Server, base_environ, free_port, gunicorn, run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def access_pids(server: Server, path: str) -> Counter[int]:
    """Worker pid of each access-log line for `path` (the JSON log carries the process id)."""
    pids: Counter[int] = Counter()
    for line in server.stdout.read_text().splitlines():
        record = json.loads(line)
        if record.get("logger") == "uvicorn.access" and f'"GET {path} ' in record["message"]:
            pids[record["process"]] += 1
    return pids


async def burst(url: str, *, requests: int) -> list[int]:
    # A fresh connection per request, all at once, so idle workers compete for accepts.
    async def one() -> int:
        async with httpx.AsyncClient(timeout=10) as client:
            return (await client.get(url)).status_code

    return await asyncio.gather(*(one() for _ in range(requests)))


@pytest.fixture
def three_workers(tmp_path: Path, migrated_server_database: str):
    # JSON logs: the production format, whose lines carry the worker pid.
    env = base_environ(tmp_path, GUNICORN_WORKERS="3", DJANGO_LOG_FORMAT="json", DJANGO_LOG_LEVEL="INFO",
                       DATABASE_URL=migrated_server_database)
    with gunicorn(tmp_path, env=env) as server:
        yield server


def test_r1_r2_1_three_workers_share_requests(three_workers: Server) -> None:
    """R1.1, R1.2, R1.4, R2.1, R6.4: three (draining) UvicornWorker processes share the requests."""
    workers = three_workers.wait_for_workers(3)
    assert len(workers) == 3
    cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in workers]
    assert all(b"gunicorn" in cmdline for cmdline in cmdlines)
    assert "Using worker: coffee_payment.workers.DrainingUvicornWorker" in three_workers.logs()

    for _ in range(20):  # bounded: 20 bursts of 30 requests at most
        statuses = asyncio.run(burst(three_workers.url + "/health", requests=30))
        assert set(statuses) == {200}
        time.sleep(0.2)  # the access log is written by the workers asynchronously
        if set(access_pids(three_workers, "/health")) >= workers:
            break
    assert set(access_pids(three_workers, "/health")) == workers


def test_r6_health_and_ready_answer_with_json(three_workers: Server) -> None:
    """R6.1-R6.3: liveness and readiness through Gunicorn."""
    health = httpx.get(three_workers.url + "/health", timeout=5)
    ready = httpx.get(three_workers.url + "/ready", timeout=5)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


@pytest.mark.parametrize("host", ["10.244.1.17", "10.244.1.17:8000", "[fd00::17]:8000"])
def test_r6_probes_accept_a_bare_pod_ip_as_host(three_workers: Server, host: str) -> None:
    """Kubelet probes send the pod IP as Host; other paths keep enforcing ALLOWED_HOSTS."""
    for path in ("/health", "/ready"):
        assert httpx.get(three_workers.url + path, headers={"host": host}, timeout=5).status_code == 200
    assert httpx.get(three_workers.url + "/admin/login/", headers={"host": host}, timeout=5).status_code == 400
    assert httpx.get(three_workers.url + "/admin/login/", headers={"host": "localhost"}, timeout=5).status_code == 200


def test_ready_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    """R6.2: readiness reports the database; liveness does not depend on it."""
    nothing_listens = free_port()
    env = base_environ(tmp_path, DATABASE_URL=f"postgres://coffee:pw@127.0.0.1:{nothing_listens}/coffee")
    with gunicorn(tmp_path, env=env) as server:
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200
        started = time.monotonic()
        ready = httpx.get(server.url + "/ready", timeout=10)
        # The database check is cut at its timeout (refused at once here); 1 s for the request itself.
        assert time.monotonic() - started < django_settings.READINESS_DATABASE_TIMEOUT + 1
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        assert set(ready.json()["checks"]) == {"database"}
        assert "Traceback" not in ready.text


def test_ready_is_503_until_the_migrations_are_applied(tmp_path: Path, server_database: str) -> None:
    """A pod whose database lacks tables must not take traffic: /v1/pay would answer 500 there."""
    env = base_environ(tmp_path, DATABASE_URL=server_database)
    with gunicorn(tmp_path, env=env) as server:
        ready = httpx.get(server.url + "/ready", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"]["migrations"].endswith("not applied (first: contenttypes.0001_initial); "
                                                             "run manage.py migrate")
        migrate = run([str(BIN / "python"), "manage.py", "migrate", "--noinput"], env=env)
        assert migrate.returncode == 0, migrate.stderr
        ready = httpx.get(server.url + "/ready", timeout=10)
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
