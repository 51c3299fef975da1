"""`make bench`: this stack against Django on sync workers and a bare ASGI app, in one run.

Every server gets the same config/gunicorn.py, the same worker count and the same wrk load on
loopback; only the application (and for `sync` the worker class) differs. Figures are printed as a
table and written to bench/results/latest.json; absolute numbers vary between machines, the ratios
measured in one run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import wrk
from tests.support.processes import BIN, REPO, Server, base_environ, gunicorn

RESULTS = REPO / "bench" / "results"


@dataclass(frozen=True)
class Stack:
    name: str
    args: tuple[str, ...]


STACKS = (
    Stack("stack", ()),
    Stack("sync", ("--worker-class", "sync", "coffee_payment.wsgi:application")),
    Stack("ceiling", ("bench.bare_asgi:app",)),
)


@dataclass(frozen=True)
class Workload:
    name: str
    path: str
    stacks: tuple[str, ...] = ("stack", "sync", "ceiling")


WORKLOADS = (Workload("health", "/health"),)


def production_environ(tmp: Path, *, workers: int) -> dict[str, str]:
    env = base_environ(tmp, DJANGO_ENV="production", DJANGO_SECRET_KEY="bench-" + "x" * 50,
                       DJANGO_ALLOWED_HOSTS="localhost,127.0.0.1", GUNICORN_WORKERS=str(workers))
    subprocess.run([str(BIN / "python"), "manage.py", "migrate", "--noinput"], cwd=REPO, env=env,
                   check=True, capture_output=True, timeout=120)
    return env


@contextmanager
def serving(tmp: Path, *, env: dict[str, str], stack: Stack) -> Iterator[Server]:
    logs = Path(tempfile.mkdtemp(dir=tmp))
    with gunicorn(logs, env=env, args=stack.args) as server:
        # Warm every worker (imports, first queries) before measuring.
        for _ in range(200):
            httpx.get(server.url + "/health", timeout=5)
        yield server


def startup_figures(tmp: Path, *, env: dict[str, str], preload: bool) -> dict[str, float]:
    """Cold start (exec to first 200), worker boot, and memory per worker."""
    # config/gunicorn.py preloads; the comparison turns it off with a second config file.
    args = () if preload else ("-c", "bench/gunicorn_no_preload.py")
    logs = Path(tempfile.mkdtemp(dir=tmp))
    started = time.monotonic()
    with gunicorn(logs, env=env, args=args, wait=False) as server:
        server.wait_until_serving(timeout=30)
        cold = time.monotonic() - started
        workers = _wait_for_workers(server, count=int(env["GUNICORN_WORKERS"]))
        for _ in range(100):
            httpx.get(server.url + "/health", timeout=5)
        memory = [_memory_kib(pid) for pid in workers]
        boot = _worker_boot_seconds(server)
    return {
        "cold_start_s": round(cold, 3),
        "worker_boot_s_max": round(max(boot), 3),
        "worker_boot_s_mean": round(sum(boot) / len(boot), 3),
        "worker_rss_mib": round(sum(m["Rss"] for m in memory) / len(memory) / 1024, 1),
        "worker_pss_mib": round(sum(m["Pss"] for m in memory) / len(memory) / 1024, 1),
    }


def _wait_for_workers(server: Server, *, count: int) -> set[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = server.worker_pids()
        if len(pids) >= count and _worker_boot_seconds(server, required=count):
            return pids
        time.sleep(0.1)
    raise RuntimeError(f"{count} workers did not boot within 30 s:\n{server.logs()}")


def _worker_boot_seconds(server: Server, *, required: int = 1) -> list[float]:
    """Per worker: 'Booting worker' (just after fork) to uvicorn's 'Application startup complete'."""
    booted: dict[int, float] = {}
    ready: dict[int, float] = {}
    for line in server.stderr.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        stamp = time.mktime(time.strptime(record["time"][:19], "%Y-%m-%d %H:%M:%S")) + int(record["time"][20:]) / 1000
        if record["message"].startswith("Booting worker with pid"):
            booted[record["process"]] = stamp
        elif record["message"] == "Application startup complete.":
            ready[record["process"]] = stamp
    boots = [ready[pid] - booted[pid] for pid in booted if pid in ready]
    return boots if len(boots) >= required else []


def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return fields


def measure(tmp: Path, *, workers: int, load: wrk.Load, log: Callable[[str], None]) -> dict[str, object]:
    env = production_environ(tmp, workers=workers)
    env["DJANGO_LOG_FORMAT"] = "json"
    throughput: dict[str, dict[str, dict[str, float | int]]] = {}
    for stack in STACKS:
        with serving(tmp, env=env, stack=stack) as server:
            for workload in WORKLOADS:
                if stack.name not in workload.stacks:
                    continue
                log(f"{workload.name:>8} on {stack.name:<8} ...")
                result = wrk.run(server.url + workload.path, load=load)
                throughput.setdefault(workload.name, {})[stack.name] = result.row()
    startup = {
        "without_preload": startup_figures(tmp, env=env, preload=False),
        "with_preload": startup_figures(tmp, env=env, preload=True),
    }
    return {"throughput": throughput, "startup": startup}


def ratios(throughput: dict[str, dict[str, dict[str, float | int]]]) -> dict[str, dict[str, float]]:
    out = {}
    for workload, by_stack in throughput.items():
        stack = by_stack["stack"]["req_per_s"]
        out[workload] = {
            f"stack/{other}": round(stack / by_stack[other]["req_per_s"], 2)
            for other in ("sync", "ceiling") if other in by_stack and by_stack[other]["req_per_s"]
        }
    return out


def print_table(figures: dict[str, object]) -> None:
    throughput = figures["throughput"]
    print(f"\n{'workload':<10}{'server':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for workload, by_stack in throughput.items():  # type: ignore[attr-defined]
        for stack, row in by_stack.items():
            print(f"{workload:<10}{stack:<10}{row['req_per_s']:>10}{row['p50_ms']:>9}{row['p99_ms']:>9}{row['errors']:>8}")
    print("\nratios:", json.dumps(figures["ratios"]))
    print("startup:", json.dumps(figures["startup"], indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args(argv)
    wrk.require_wrk()
    load = wrk.Load(connections=args.connections, seconds=args.seconds)
    print(f"load: wrk -t{load.threads} -c{load.connections} -d{load.seconds}s on 127.0.0.1; "
          f"{args.workers} workers per server", flush=True)
    with tempfile.TemporaryDirectory(prefix="coffee-bench-") as tmp:
        figures = measure(Path(tmp), workers=args.workers, load=load,
                          log=lambda line: print(line, file=sys.stderr, flush=True))
    figures["ratios"] = ratios(figures["throughput"])  # type: ignore[arg-type]
    figures["settings"] = {"tool": "wrk", "workers": args.workers, "connections": load.connections,
                           "seconds": load.seconds, "host": "127.0.0.1"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(figures, indent=2) + "\n")
    print_table(figures)
    print(f"\nwritten to {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    main()
