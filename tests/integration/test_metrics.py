"""/metrics through a real `gunicorn -c config/gunicorn.py` with two workers, on the metrics port:
every worker's requests counted, the multiprocess directory cleaned, any Host answered, X-Request-ID
in the logs; on the application's port it is no page at all."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.processes import Server, base_environ, gunicorn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def scrape(server: Server, **headers: str) -> dict[str, float]:
    """The samples of a scrape: 'name{labels}' -> value."""
    response = httpx.get(server.metrics_url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def requests_of(samples: dict[str, float], route: str, status: str) -> float:
    return samples.get(f'coffee_http_request_duration_seconds_count{{route="{route}",status="{status}"}}', 0.0)


def access_pids(server: Server) -> set[int]:
    return {
        record["process"]
        for record in map(json.loads, server.stdout.read_text().splitlines())
        if record.get("logger") == "uvicorn.access" and '"GET /health ' in record["message"]
    }


async def burst(url: str, *, requests: int) -> list[int]:
    # A fresh connection per request, all at once, so both workers compete for the accepts.
    async def one() -> int:
        async with httpx.AsyncClient(timeout=10) as client:
            return (await client.get(url)).status_code

    return await asyncio.gather(*(one() for _ in range(requests)))


def environ(tmp_path: Path) -> dict[str, str]:
    # JSON logs at INFO: the production format, access lines included.
    return base_environ(tmp_path, GUNICORN_WORKERS="2", DJANGO_LOG_FORMAT="json", DJANGO_LOG_LEVEL="INFO")


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # One server for the module (a start costs seconds): each test counts only what it alone sends.
    tmp_path = tmp_path_factory.mktemp("two-workers")
    with gunicorn(tmp_path, env=environ(tmp_path)) as server:
        server.wait_for_workers(2)
        yield server


def test_metrics_count_the_requests_of_every_worker(two_workers: Server) -> None:
    workers = two_workers.wait_for_workers(2)
    before = requests_of(scrape(two_workers), "health", "200")
    sent = 0
    for _ in range(10):  # bounded: 10 bursts of 20 until both workers have answered some
        statuses = asyncio.run(burst(two_workers.url + "/health", requests=20))
        assert set(statuses) == {200}
        sent += len(statuses)
        if two_workers.wait_for_log('"GET /health ', timeout=1) and access_pids(two_workers) >= workers:
            break
    assert access_pids(two_workers) == workers
    assert requests_of(scrape(two_workers), "health", "200") - before == sent


def test_hostile_paths_share_one_unmatched_series(two_workers: Server) -> None:
    for number in range(5):
        assert httpx.get(f"{two_workers.url}/no/such/path-{number}", timeout=5).status_code == 404
    samples = scrape(two_workers)
    assert requests_of(samples, "unmatched", "404") == 5
    assert not any("path-" in name for name in samples)


@pytest.mark.parametrize("host", ["10.244.1.17:9464", "[fd00::17]:9464"])
def test_metrics_answer_a_pod_ip_host_on_the_metrics_port_only(two_workers: Server, host: str) -> None:
    samples = scrape(two_workers, host=host)
    assert "coffee_http_requests_in_flight" in samples
    # Other paths keep enforcing ALLOWED_HOSTS.
    assert httpx.get(two_workers.url + "/v1/order-status/x", headers={"host": host}, timeout=5).status_code == 400
    # The metrics port serves nothing else, and the application's port no metrics.
    base = two_workers.metrics_url.removesuffix("/metrics")
    assert httpx.get(base + "/v1/order-status/x", timeout=5).status_code == 404
    assert httpx.post(two_workers.metrics_url, timeout=5).status_code == 405
    assert httpx.get(two_workers.url + "/metrics", headers={"host": host}, timeout=5).status_code in (400, 404)


def test_a_stopped_worker_leaves_its_counts_and_takes_its_live_gauges(two_workers: Server) -> None:
    # base_environ puts each server's metrics directory next to its logs.
    metrics_dir = two_workers.stdout.parent / "metrics"
    pid = min(two_workers.wait_for_workers(2))
    deadline = time.monotonic() + 5  # each worker writes its gauges once it has started
    while not (metrics_dir / f"gauge_livesum_{pid}.db").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (metrics_dir / f"gauge_livesum_{pid}.db").exists()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10  # the master's child_exit hook removes it
    while (metrics_dir / f"gauge_livesum_{pid}.db").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (metrics_dir / f"gauge_livesum_{pid}.db").exists()
    assert (metrics_dir / f"counter_{pid}.db").exists()
    two_workers.wait_for_workers(2)
    assert scrape(two_workers)['coffee_worker_drains_total{reason="signal"}'] == 1


def test_a_restarted_server_starts_from_zero(tmp_path: Path) -> None:
    env = environ(tmp_path) | {"GUNICORN_WORKERS": "1"}
    with gunicorn(tmp_path, env=env) as server:
        for _ in range(3):
            httpx.get(server.url + "/no-such-path", timeout=5)
        assert requests_of(scrape(server), "unmatched", "404") == 3
    # A container restarted in the same pod finds the previous run's files in its emptyDir.
    assert list((tmp_path / "metrics").glob("histogram_*.db"))
    with gunicorn(tmp_path, env=env) as server:
        assert requests_of(scrape(server), "unmatched", "404") == 0


def test_the_request_id_is_echoed_and_in_the_requests_log_lines(two_workers: Server) -> None:
    kept = httpx.get(two_workers.url + "/health", headers={"x-request-id": "probe-7.a_b"}, timeout=5)
    assert kept.headers["x-request-id"] == "probe-7.a_b"
    replaced = httpx.get(two_workers.url + "/health", headers={"x-request-id": "bad id"}, timeout=5)
    assert len(replaced.headers["x-request-id"]) == 32 and replaced.headers["x-request-id"] != "bad id"
    assert two_workers.wait_for_log('"request_id": "probe-7.a_b"')
    lines = [json.loads(line) for line in two_workers.stdout.read_text().splitlines()]
    (access,) = [line for line in lines if line.get("request_id") == "probe-7.a_b"]
    assert access["logger"] == "uvicorn.access" and '"GET /health ' in access["message"]
    # Lines written outside a request (start-up, the master) carry none.
    assert not any("request_id" in json.loads(line) for line in two_workers.stderr.read_text().splitlines()
                   if '"Booting worker' in line)
