"""Run wrk (Debian's package) on loopback and parse what it prints."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
LUA = Path(__file__).resolve().parent / "lua"
# Seconds wrk waits for an answer before counting the request as a timeout (an error).
TIMEOUT_S = 5


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


@dataclass(frozen=True)
class Script:
    """A Lua script under bench/lua and the arguments wrk passes to its init()."""

    name: str
    args: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return LUA / self.name


def command(url: str, *, load: Load, script: Script | None = None) -> list[str]:
    line = [require_wrk(), f"-t{load.threads}", f"-c{load.connections}", f"-d{load.seconds}s",
            "--latency", "--timeout", f"{TIMEOUT_S}s"]
    if script is not None:
        line += ["-s", str(script.path), url, "--", *script.args]
    else:
        line.append(url)
    return line


def run(url: str, *, load: Load, script: Script | None = None) -> Result:
    return run_together([(url, load, script)])[0]


def run_together(runs: list[tuple[str, Load, Script | None]]) -> list[Result]:
    """Several wrk processes at once (one load while another measures); their results in order."""
    processes = [subprocess.Popen(command(url, load=load, script=script), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for url, load, script in runs]
    try:
        outputs = []
        for process, (_, load, _) in zip(processes, runs):
            # wrk stops by itself after -d seconds; the timeout is the backstop.
            stdout, stderr = process.communicate(timeout=load.seconds + 30)
            if process.returncode != 0:
                raise RuntimeError(f"wrk exited with {process.returncode}: {stderr.strip()}")
            outputs.append(stdout)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    return [parse(output) for output in outputs]
