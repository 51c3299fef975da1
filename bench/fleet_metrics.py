"""The server's own view of a load step: its `/metrics` and its CPU time, before and after.

CPU: user + system seconds of every process in the server's process group (master and workers,
from /proc), so a step's CPU per answered request can be compared between servers even on a
machine shared with other work, where latency cannot. The whole machine's busy CPU time
(/proc/stat) tells what the rest (generator, fake provider, PostgreSQL) took beside it.

The metric names are not fixed here: the first histogram whose name speaks of request duration
(`*request*duration*`, `*request*latency*`, `*http*duration*`) is read, its buckets summed over
every label set (route, method, status, worker). A server without `/metrics` (404, or nothing
Prometheus can parse) gives None, reported as "n/a".
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import os
from pathlib import Path

import httpx

Snapshot = dict[str, Any]


def _is_request_duration(name: str) -> bool:
    return ("request" in name or "http" in name) and ("duration" in name or "latency" in name)


def metrics_snapshot(url: str) -> Snapshot | None:
    """{"name": histogram name, "buckets": {upper bound: cumulative count}} or None; `url` is the
    metrics URL (the stack's own port, GUNICORN_METRICS_PORT)."""
    try:
        response = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    # Imported here: without /metrics (the smoke test's server) the bench extra is not needed.
    from prometheus_client.parser import text_string_to_metric_families

    try:
        families = list(text_string_to_metric_families(response.text))
    except ValueError:
        return None
    for family in families:
        if family.type != "histogram" or not _is_request_duration(family.name):
            continue
        buckets: dict[float, float] = defaultdict(float)
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] += sample.value
        if buckets:
            return {"name": family.name, "buckets": dict(buckets)}
    return None


def metrics_delta(before: Snapshot | None, after: Snapshot | None) -> dict[str, Any] | str:
    """Requests the server counted between two snapshots and their p50/p99 (a bucket's upper
    bound, the most a histogram can say), or "n/a" without /metrics."""
    if before is None or after is None or before["name"] != after["name"]:
        return "n/a"
    bounds = sorted(after["buckets"])
    counts = [after["buckets"][b] - before["buckets"].get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0

    def quantile(q: float) -> float | None:
        for bound, count in zip(bounds, counts):
            if total and count >= q * total:
                return round(bound * 1000, 1) if bound != float("inf") else None
        return None

    return {"histogram": after["name"], "requests": int(total), "p50_ms_at_most": quantile(0.5),
            "p99_ms_at_most": quantile(0.99)}


def group_cpu_seconds(group: int) -> float:
    """User + system CPU seconds of the live processes in process group `group`."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # After the parenthesised command name: state, ppid, pgrp, ... utime is field 14, stime 15.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy (not idle or waiting for I/O) since boot."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user).
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
