"""The chaos run's fault schedule, drawn from its seed, and the hands that inject it.

Blows: a worker SIGKILLed (the Gunicorn master forks another), PostgreSQL restarted, two
`manage.py reconcile_payments` at once. Periods: the provider's API failing (500, hanging past the
read timeout, 429, the first attempt of each call failing, slow), its notifications lost, repeated,
delayed or reordered (devtools/fake_provider_faults.py), a machine gone silent. Periods of one
family never overlap, so each one's end switches back to a healthy provider.

A worker is stopped (SIGSTOP) before it is killed, and its connections read from /proc meanwhile:
the client ports of the requests that die with it, the only unanswered requests a run excuses.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools import postgres
from devtools.chaos_http import Client
from devtools.processes import BIN, REPO, Server

# The families of periods and what each kind asks of the fake provider (`POST /control`).
API_KINDS = ("provider_error", "provider_hang", "provider_429", "provider_flaky", "provider_latency")
NOTIFICATION_KINDS = ("notifications_lost", "notifications_repeated", "notifications_delayed",
                      "notifications_reordered")
BLOW_KINDS = ("worker_kill", "postgres_restart", "reconcile_twice")
KINDS = (*BLOW_KINDS, *API_KINDS, *NOTIFICATION_KINDS, "machine_silent")
API_HEALTHY = {"fail": "none", "latency": 0.0}
NOTIFICATIONS_HEALTHY: dict[str, Any] = {"notifications": {}}
# Seconds: how long a period lasts, the healthy time between two of a family; a blow of each kind
# every this many seconds of the run (at least one).
LASTING, GAP = (1.5, 4.0), (1.5, 5.0)
EVERY = {"worker_kill": 12, "postgres_restart": 20, "reconcile_twice": 25, "machine_silent": 30}
# A reconciliation run that takes longer than this is killed (and counted as failed).
RECONCILE_TIMEOUT = 120.0


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the faults began
    kind: str
    seconds: float = 0.0  # a period's length; 0 for a blow
    control: Mapping[str, Any] = field(default_factory=dict)  # what the fake provider is told
    target: int = 0  # which worker (of those running, by pid order) or machine


def schedule_build(rng: random.Random, *, seconds: float, machines: int, read_timeout: float,
                   silence: float) -> list[Fault]:
    """The faults of a run of `seconds`, in time order. `read_timeout`: the server's provider read
    timeout (a hang outlasts it, a latency spike reaches past it); `silence`: the least seconds of a
    silent machine (long enough for the server to take it for offline while its next order shows)."""
    faults: list[Fault] = []
    for kinds in (API_KINDS, NOTIFICATION_KINDS):
        moment, deck = rng.uniform(*GAP), []
        while moment + LASTING[0] < seconds:
            deck = deck or rng.sample(kinds, len(kinds))  # every kind before any twice
            kind = deck.pop()
            lasting = min(rng.uniform(*LASTING), seconds - moment)
            faults.append(Fault(moment, kind, lasting, _control(kind, rng, read_timeout=read_timeout)))
            moment += lasting + rng.uniform(*GAP)
    for kind, every in EVERY.items():
        for _ in range(max(1, round(seconds / every))):
            moment = rng.uniform(1.0, seconds)
            if kind == "machine_silent":
                faults.append(Fault(moment, kind, silence + rng.uniform(1, 4), target=rng.randrange(machines)))
            else:
                faults.append(Fault(moment, kind, target=rng.randrange(64)))
    return sorted(faults, key=lambda fault: fault.at)


def _control(kind: str, rng: random.Random, *, read_timeout: float) -> dict[str, Any]:
    if kind == "provider_error":
        return {"fail": "error"}
    if kind == "provider_hang":
        return {"fail": "hang", "hang_seconds": read_timeout + 1}
    if kind == "provider_429":
        return {"fail": "429"}
    if kind == "provider_flaky":
        return {"fail": "flaky"}
    if kind == "provider_latency":
        return {"latency": round(rng.uniform(0.3, read_timeout * 1.5), 2)}
    faults = {"notifications_lost": {"lose": round(rng.uniform(0.3, 1.0), 2)},
              "notifications_repeated": {"repeat": round(rng.uniform(0.3, 1.0), 2)},
              "notifications_delayed": {"delay": round(rng.uniform(1.0, 5.0), 2)},
              "notifications_reordered": {"reorder": True}}[kind]
    return {"notifications": faults, "seed": rng.randrange(2**31)}


@dataclass(frozen=True)
class Kill:
    stopped: float  # time.monotonic() at SIGSTOP, and at SIGKILL
    killed: float
    pid: int
    ports: frozenset[int]  # client ports of the connections the worker had open


@dataclass(frozen=True)
class Window:
    """When a fault that may make the server answer 503 was on (time.monotonic())."""

    kind: str
    start: float
    end: float


@dataclass
class ReconcileRun:
    command: str
    returncode: int | None  # None: killed at its timeout
    stdout: str
    stderr: str
    during_faults: bool
    started: float = 0.0  # time.monotonic()
    ended: float = 0.0


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def client_ports(pid: int, server_port: int) -> frozenset[int]:
    """The peer ports of the TCP connections to `server_port` that process `pid` holds."""
    inodes = _socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            columns = line.split()
            local, remote, inode = columns[1], columns[2], columns[9]
            if inode in inodes and int(local.rsplit(":", 1)[1], 16) == server_port:
                peer = int(remote.rsplit(":", 1)[1], 16)
                if peer:
                    ports.add(peer)
    return frozenset(ports)


def worker_kill(server: Server, *, target: int) -> Kill | None:
    """SIGKILL one of the server's workers (pid order, `target` modulo their number), its
    connections read while it is stopped; None when no worker runs (the master is forking one)."""
    pids = sorted(server.worker_pids())
    if not pids:
        return None
    pid = pids[target % len(pids)]
    stopped = time.monotonic()
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return None
    try:
        ports = client_ports(pid, server.port)
    finally:
        os.kill(pid, signal.SIGKILL)
    return Kill(stopped=stopped, killed=time.monotonic(), pid=pid, ports=ports)


async def command_run(args: list[str], *, env: Mapping[str, str], during_faults: bool,
                      timeout: float = RECONCILE_TIMEOUT) -> ReconcileRun:
    """`python <args>` in the repository with the server's environment, killed after `timeout`."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(str(BIN / "python"), *args, cwd=REPO, env=dict(env),
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    returncode: int | None
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
        returncode = process.returncode
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        returncode = None
    return ReconcileRun(" ".join(args), returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                        during_faults, started, time.monotonic())


@dataclass
class Injector:
    """Injects a schedule against the running server, fake provider and cluster; keeps what it did."""

    server: Server
    database_url: str
    env: Mapping[str, str]
    control_url: str
    silent_until: dict[int, float]  # machine index -> time.monotonic() its silence ends
    injected: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    kills: list[Kill] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    reconcile_runs: list[ReconcileRun] = field(default_factory=list)
    control: Client = field(default_factory=lambda: Client(timeout=10.0))
    log: Callable[[str], None] = lambda line: None

    async def run(self, schedule: list[Fault], *, start: float) -> None:
        """Every fault at its time (each blow and period a task of its own); back to healthy at the end."""
        tasks = []
        try:
            for fault in schedule:
                await asyncio.sleep(max(0.0, start + fault.at - time.monotonic()))
                tasks.append(asyncio.ensure_future(self._inject(fault)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.healthy()

    async def healthy(self) -> None:
        for body in (API_HEALTHY, NOTIFICATIONS_HEALTHY):
            await self._tell(body)

    async def _tell(self, body: Mapping[str, Any]) -> None:
        reply = await self.control.request("control", self.control_url, method="POST", body=dict(body))
        if reply is None or reply.status != 200:
            raise RuntimeError(f"the fake provider refused control {dict(body)}: {reply and reply.body[:200]!r}")

    async def _inject(self, fault: Fault) -> None:
        began = time.monotonic()
        if fault.kind == "worker_kill":
            kill = worker_kill(self.server, target=fault.target)
            if kill is None:
                self.skipped[fault.kind] += 1
                return
            self.kills.append(kill)
            self.log(f"killed worker {kill.pid} with {len(kill.ports)} connections")
        elif fault.kind == "postgres_restart":
            await asyncio.get_running_loop().run_in_executor(None, postgres.restart, self.database_url)
            self.windows.append(Window(fault.kind, began, time.monotonic()))
        elif fault.kind == "reconcile_twice":
            self.reconcile_runs += await asyncio.gather(*(
                command_run(["manage.py", "reconcile_payments"], env=self.env, during_faults=True) for _ in range(2)))
        elif fault.kind == "machine_silent":
            self.silent_until[fault.target] = max(self.silent_until.get(fault.target, 0.0), began + fault.seconds)
        else:
            await self._tell(fault.control)
            try:
                await asyncio.sleep(fault.seconds)
            finally:
                await self._tell(API_HEALTHY if fault.kind in API_KINDS else NOTIFICATIONS_HEALTHY)
                if fault.kind in API_KINDS:
                    self.windows.append(Window(fault.kind, began, time.monotonic()))
        self.injected[fault.kind] += 1
