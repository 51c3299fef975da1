"""Run wrk (Debian's package) on loopback and parse what it prints."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass(frozen=True)
class Load:
    connections: int
    seconds: int
    threads: int = 1


@dataclass(frozen=True)
class Result:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors (connect/read/write/timeout) plus non-2xx/3xx responses

    def row(self) -> dict[str, float | int]:
        return {"req_per_s": round(self.requests_per_second, 1), "p50_ms": round(self.p50_ms, 2),
                "p99_ms": round(self.p99_ms, 2), "requests": self.requests, "errors": self.errors}


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (Debian's package)")
    return path


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse(output: str) -> Result:
    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, output, re.MULTILINE)

    errors = 0
    if socket := find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"):
        errors += sum(int(n) for n in socket.groups())
    if non_2xx := find(r"Non-2xx or 3xx responses: (\d+)"):
        errors += int(non_2xx.group(1))
    rps, p50, p99, total = (find(p) for p in (r"Requests/sec:\s+([0-9.]+)", r"^\s+50%\s+(\S+)",
                                              r"^\s+99%\s+(\S+)", r"^\s+(\d+) requests in"))
    if not (rps and p50 and p99 and total):
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    return Result(float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), int(total.group(1)), errors)


def run(url: str, *, load: Load, script: Path | None = None) -> Result:
    command = [require_wrk(), f"-t{load.threads}", f"-c{load.connections}", f"-d{load.seconds}s",
               "--latency", "--timeout", "5s"]
    if script is not None:
        command += ["-s", str(script)]
    # wrk stops by itself after -d seconds; the subprocess timeout is the backstop.
    done = subprocess.run([*command, url], capture_output=True, text=True, timeout=load.seconds + 30, check=True)
    return parse(done.stdout)
