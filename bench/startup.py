"""Cold start, worker boot and memory per worker of `gunicorn -c config/gunicorn.py`.

- cold start: exec of the master to the first 200 from /health;
- worker boot: per worker, Gunicorn's "Booting worker" (logged just after the fork) to uvicorn's
  "Application startup complete." (JSON log timestamps, millisecond resolution);
- memory: RSS and PSS of each worker (/proc/<pid>/smaps_rollup) after 100 requests.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import httpx

from devtools.processes import Server, gunicorn

# config/gunicorn.py preloads; the comparison turns it off with a second config file.
NO_PRELOAD = ("-c", "bench/gunicorn_no_preload.py")


def startup_figures(tmp: Path, *, env: dict[str, str], preload: bool) -> dict[str, float]:
    logs = Path(tempfile.mkdtemp(dir=tmp))
    started = time.monotonic()
    with gunicorn(logs, env=env, args=() if preload else NO_PRELOAD, wait=False) as server:
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
