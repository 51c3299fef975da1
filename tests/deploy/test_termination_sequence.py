"""The kubelet's termination sequence, replayed against a real server under load.

When a pod is deleted, two things start at once: the kubelet runs the preStop hook and then sends
SIGTERM to the container's PID 1 (the Gunicorn master), and the endpoint removal travels to every
node's proxy and load balancer, which keep sending new requests until it arrives. The preStop
sleep exists so that the server still accepts those requests.

The server is the production overlay's: its ConfigMap environment (workers, timeouts) through
`gunicorn -c config/gunicorn.py`, on a loopback port. The clock is scaled down: every manifest
second is TIME_SCALE test seconds, so the 10 s preStop sleep lasts 2 s here, and the load balancer
stops sending ENDPOINT_REMOVAL of the way into it (after 1 s). Gunicorn's own timers are not
scaled: the master must exit within the unscaled rest of the grace period.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from devtools.processes import Server, base_environ, gunicorn
from tests.support.kubernetes import SECRET_STAND_INS, overlay

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TIME_SCALE = 0.2
# The fraction of the preStop sleep after which no new request arrives: shorter than the sleep.
ENDPOINT_REMOVAL = 0.5
# Test seconds of traffic before the pod is deleted.
WARM_UP = 0.5
# Concurrent load-balancer connections, each bounded in requests.
CONNECTIONS = 8
REQUESTS_PER_CONNECTION = 5000
PATHS = ("/health", "/ready")


@dataclass(frozen=True)
class Termination:
    pre_stop: float  # manifest seconds
    grace_period: float  # manifest seconds


@dataclass
class Tally:
    ok: int = 0
    ok_while_terminating: int = 0
    failures: list[str] = field(default_factory=list)


def production_termination() -> Termination:
    spec = overlay("production").deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return Termination(
        pre_stop=container["lifecycle"]["preStop"]["sleep"]["seconds"],
        grace_period=spec["terminationGracePeriodSeconds"],
    )


@pytest.fixture
def production_server(tmp_path: Path, migrated_server_database: str):
    manifests = overlay("production")
    pod_environ = manifests.pod_environ(manifests.deployment, secret=SECRET_STAND_INS)
    # Loopback, a free port and a local database (migrated, as the migration Job does) instead of the cluster's.
    local = {"GUNICORN_HOST", "GUNICORN_PORT", "DATABASE_URL"}
    env = base_environ(tmp_path, **{k: v for k, v in pod_environ.items() if k not in local},
                       DATABASE_URL=migrated_server_database)
    # The production layer refuses SQLite unless told: here one server, one file.
    env["DATABASE_ALLOW_SQLITE"] = "true"
    with gunicorn(tmp_path, env=env) as server:
        yield server


async def load_balancer(url: str, *, stop_at: float, terminating_from: float) -> Tally:
    """Keep-alive connections sending requests back to back until the endpoint is gone."""
    tally = Tally()
    loop = asyncio.get_running_loop()

    async def connection() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=5, limits=limits) as client:
            for i in range(REQUESTS_PER_CONNECTION):
                if loop.time() >= stop_at:
                    return
                try:
                    response = await client.get(PATHS[i % len(PATHS)])
                except httpx.HTTPError as exc:
                    tally.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    tally.failures.append(f"HTTP {response.status_code}")
                    continue
                tally.ok += 1
                if loop.time() >= terminating_from:
                    tally.ok_while_terminating += 1

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return tally


async def kubelet(server: Server, *, pre_stop: float) -> None:
    """Run the preStop sleep, then SIGTERM the container's PID 1: the master, not its group."""
    await asyncio.sleep(pre_stop)
    server.process.send_signal(signal.SIGTERM)


async def delete_pod(server: Server, *, pre_stop: float, endpoint_removal: float) -> Tally:
    """Traffic, then the pod's deletion: the kubelet and the endpoint removal start together."""
    loop = asyncio.get_running_loop()
    deleted_at = loop.time() + WARM_UP
    balancer = asyncio.create_task(
        load_balancer(server.url, stop_at=deleted_at + endpoint_removal, terminating_from=deleted_at)
    )
    await asyncio.sleep(WARM_UP)
    await kubelet(server, pre_stop=pre_stop)
    return await balancer


def test_deleting_a_pod_under_load_fails_no_request(production_server: Server) -> None:
    """R3.7, R6.2: readiness-driven endpoint removal, preStop, SIGTERM: no request fails, in time."""
    termination = production_termination()
    pre_stop = termination.pre_stop * TIME_SCALE
    tally = asyncio.run(
        delete_pod(production_server, pre_stop=pre_stop, endpoint_removal=ENDPOINT_REMOVAL * pre_stop)
    )
    signalled = time.monotonic()
    returncode = production_server.process.wait(timeout=termination.grace_period - termination.pre_stop)

    assert tally.failures == []
    # The balancer really sent traffic while the pod was terminating.
    assert tally.ok_while_terminating > 0
    assert returncode == 0, production_server.logs()
    assert time.monotonic() - signalled < termination.grace_period - termination.pre_stop
    assert "Shutting down: Master" in production_server.logs()


def test_without_the_prestop_sleep_the_same_deletion_fails_requests(production_server: Server) -> None:
    """The control: SIGTERM at once while the endpoint removal is still on its way."""
    pre_stop = production_termination().pre_stop * TIME_SCALE
    tally = asyncio.run(delete_pod(production_server, pre_stop=0, endpoint_removal=ENDPOINT_REMOVAL * pre_stop))
    assert tally.failures != []
    assert production_server.process.wait(timeout=30) == 0
