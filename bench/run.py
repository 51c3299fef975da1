"""`make bench`: this stack against Django on sync workers and a bare ASGI app, in one run.

Every server gets the same config/gunicorn.py (production layer: JSON logs, DEBUG off), the same
worker count, a copy of the same seeded SQLite database, its own fake provider and the same wrk
loads on loopback; only the application (and for `sync` the worker class) differs. Each round
runs every workload on every server; the table gives the median of the rounds (and the req/s
range), ratios are taken within a round. Figures are printed and written to
bench/results/latest.json; absolute numbers vary between machines, the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import wrk
from bench.databases import KINDS, Seeded, seeded
from bench.startup import startup_figures
from bench.workloads import POLL_CONNECTIONS, WORKLOADS, Options
from devtools.processes import REPO, Server, base_environ, fake_provider, gunicorn

RESULTS = REPO / "bench" / "results"
PROVIDER_SHOP = "demo-shop:demo-secret"  # the shop bench/seed.py's merchant (seed_demo) uses

@dataclass(frozen=True)
class Stack:
    name: str
    args: tuple[str, ...]


STACKS = (
    Stack("stack", ()),
    Stack("sync", ("--worker-class", "sync", "coffee_payment.wsgi:application")),
    Stack("ceiling", ("bench.bare_asgi:app",)),
)

# (description, figure, passes) for each target of the issue; figures come from summarise().
Target = tuple[str, Callable[[dict], float | None], Callable[[float], bool]]
TARGETS: tuple[Target, ...] = (
    ("health: stack/sync >= 2", lambda f: f["ratios"]["health"]["stack/sync"]["median"], lambda v: v >= 2),
    ("status: stack/sync >= 2", lambda f: f["ratios"]["status"]["stack/sync"]["median"], lambda v: v >= 2),
    ("payment: stack/sync >= 30", lambda f: f["ratios"]["payment"]["stack/sync"]["median"], lambda v: v >= 30),
    ("payment-poll: stack p99 < 50 ms", lambda f: f["table"]["payment-poll"]["stack"]["p99_ms"], lambda v: v < 50),
    ("payment: stack errors == 0", lambda f: f["table"]["payment"]["stack"]["errors"]
     + f["table"]["payment-poll"]["stack"]["errors"], lambda v: v == 0),
    ("worker boot < 0.3 s (preload)", lambda f: f["startup"]["with_preload"]["worker_boot_s_max"], lambda v: v < 0.3),
    ("cold start < 2 s", lambda f: f["startup"]["with_preload"]["cold_start_s"], lambda v: v < 2),
)


def production_environ(tmp: Path, *, workers: int) -> dict[str, str]:
    # Plain HTTP on loopback with no TLS proxy in front: production's HTTPS redirect would answer
    # every request with a 301.
    return base_environ(tmp, DJANGO_ENV="production", DJANGO_SECRET_KEY="bench-" + "x" * 50,
                        DJANGO_ALLOWED_HOSTS="localhost,127.0.0.1", DJANGO_LOG_FORMAT="json",
                        GUNICORN_WORKERS=str(workers), PAYMENT_PROVIDER_SECRETS=PROVIDER_SHOP,
                        # One server per database file at a time (postgres: ignored).
                        DATABASE_ALLOW_SQLITE="true",
                        # Plain HTTP on loopback: no redirect to https.
                        DJANGO_SECURE_SSL_REDIRECT="false")


@contextmanager
def serving(tmp: Path, *, env: dict[str, str], stack: Stack, database: Seeded, latency: float) -> Iterator[Server]:
    logs = Path(tempfile.mkdtemp(dir=tmp))
    with fake_provider(logs, "--latency", str(latency), "--credentials", PROVIDER_SHOP) as provider:
        env = {**env, "DATABASE_URL": database.copy(logs), "PAYMENT_PROVIDER_URL": provider.url + "/v3"}
        with gunicorn(logs, env=env, args=stack.args) as server:
            # Warm every worker (imports, first queries) before measuring.
            for _ in range(200):
                httpx.get(server.url + "/health", timeout=5)
            yield server


def one_round(tmp: Path, *, env: dict[str, str], database: Seeded, options: Options, workloads: list[str],
              latency: float, log: Callable[[str], None]) -> dict[str, dict[str, dict[str, float | int]]]:
    """{row: {server: figures}} for one pass over every server."""
    rows: dict[str, dict[str, dict[str, float | int]]] = {}
    for stack in STACKS:
        with serving(tmp, env=env, stack=stack, database=database, latency=latency) as server:
            for name in workloads:
                log(f"{name:>8} on {stack.name:<8} ...")
                for row, result in WORKLOADS[name](server.url, options).items():
                    rows.setdefault(row, {})[stack.name] = result.row()
    return rows


def summarise(rounds: list[dict[str, dict[str, dict[str, float | int]]]]) -> dict[str, dict]:
    """Medians over the rounds; ratios per round, then their median and range."""
    table: dict[str, dict[str, dict[str, float | int]]] = {}
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for row, by_server in rounds[0].items():
        for server in by_server:
            cells = [r[row][server] for r in rounds]
            rps = [float(c["req_per_s"]) for c in cells]
            # Latency only from rounds that got answers: wrk reports 0 ms when every request timed out.
            answered = [c for c in cells if int(c["requests"]) > int(c["errors"])] or cells
            table.setdefault(row, {})[server] = {
                "req_per_s": round(statistics.median(rps), 1), "req_per_s_min": min(rps), "req_per_s_max": max(rps),
                "p50_ms": round(statistics.median(float(c["p50_ms"]) for c in answered), 2),
                "p99_ms": round(statistics.median(float(c["p99_ms"]) for c in answered), 2),
                "p99_ms_max": max(float(c["p99_ms"]) for c in answered),
                "errors": sum(int(c["errors"]) for c in cells),
                "answered": sum(max(int(c["requests"]) - int(c["errors"]), 0) for c in cells),
            }
        if "stack" not in by_server or row.endswith("-poll"):
            continue
        for other in ("sync", "ceiling"):
            if other in by_server:
                per_round = [round(float(r[row]["stack"]["req_per_s"]) / max(float(r[row][other]["req_per_s"]), 0.1), 2)
                             for r in rounds]
                ratios.setdefault(row, {})[f"stack/{other}"] = {
                    "median": round(statistics.median(per_round), 2), "min": min(per_round), "max": max(per_round),
                    "rounds": per_round}
    return {"table": table, "ratios": ratios}


def print_report(figures: dict) -> None:
    print(f"\n{'workload':<14}{'server':<9}{'req/s':>9}{'(min-max)':>17}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for row, by_server in figures["table"].items():
        for server, cell in by_server.items():
            spread = f"({cell['req_per_s_min']:.0f}-{cell['req_per_s_max']:.0f})"
            # wrk has no latency for a load that got no answer at all (sync workers all busy).
            latency = (f"{cell['p50_ms']:>9.2f}{cell['p99_ms']:>9.2f}" if cell["answered"]
                       else f"{'no answer in ' + str(figures['settings']['seconds']) + ' s':>18}")
            print(f"{row:<14}{server:<9}{cell['req_per_s']:>9.1f}{spread:>17}{latency}{cell['errors']:>8}")
    print("\nratios (median of rounds, range):")
    for row, by_pair in figures["ratios"].items():
        print("  " + "   ".join(f"{row} {pair} {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"
                                for pair, r in by_pair.items()))
    print("\nstartup (4 workers unless --workers):")
    for mode, values in figures["startup"].items():
        print(f"  {mode:<16}" + "  ".join(f"{key} {value}" for key, value in values.items()))
    print("\ntargets:")
    for description, figure, passes in TARGETS:
        try:
            value = figure(figures)
        except KeyError:
            print(f"  {description:<36} not measured")
            continue
        print(f"  {description:<36} {value:>8}  {'met' if passes(value) else 'MISSED'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4, help="worker processes of every server")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections for health and status")
    parser.add_argument("--seconds", type=int, default=6, help="length of every wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="passes over every server and workload")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of: "
                        + ", ".join(WORKLOADS))
    parser.add_argument("--payment-connections", type=int, default=200, help="payment creations in flight")
    parser.add_argument("--poll-rate", type=int, default=100, help="status polls per second during payments")
    parser.add_argument("--provider-latency", type=float, default=0.3, help="fake provider's seconds per call")
    parser.add_argument("--database", choices=KINDS, default="sqlite",
                        help="sqlite (a file) or postgres (a throwaway cluster; needs PostgreSQL's server binaries)")
    parser.add_argument("--no-startup", action="store_true", help="skip cold start, boot and memory figures")
    args = parser.parse_args(argv)
    workloads = [name.strip() for name in args.workloads.split(",") if name.strip()]
    if unknown := set(workloads) - set(WORKLOADS):
        parser.error(f"unknown workload(s) {', '.join(sorted(unknown))} (allowed: {', '.join(WORKLOADS)})")
    wrk.require_wrk()
    options = Options(connections=args.connections, seconds=args.seconds, payment_connections=args.payment_connections,
                      poll_rate=args.poll_rate, status_orders=1000,
                      # Enough for every request of the fastest server to pay a new order.
                      payment_orders=1000 * args.seconds)
    settings = {
        "tool": "wrk (-t1, --latency, --timeout 5s)", "host": "127.0.0.1", "workers": args.workers,
        "connections": args.connections, "seconds": args.seconds, "rounds": args.rounds,
        "payment_connections": args.payment_connections, "poll_rate": args.poll_rate,
        "poll_connections": POLL_CONNECTIONS, "provider_latency_s": args.provider_latency,
        "database": {"sqlite": "SQLite file (WAL, synchronous=NORMAL, IMMEDIATE transactions)",
                     "postgres": "PostgreSQL (throwaway cluster, fsync off, Django's pool)"}[args.database]
        + ", a fresh copy per server", "layer": "production (JSON logs, DEBUG off)",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    print("bench: " + ", ".join(f"{key} {value}" for key, value in settings.items()), flush=True)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="coffee-bench-") as tmp_name:
        tmp = Path(tmp_name)
        env = production_environ(tmp, workers=args.workers)
        with seeded(args.database, tmp=tmp, env=env, status_orders=options.status_orders,
                    payment_orders=options.payment_orders) as database:
            rounds = []
            for number in range(1, args.rounds + 1):
                log(f"round {number}/{args.rounds}")
                rounds.append(one_round(tmp, env=env, database=database, options=options, workloads=workloads,
                                        latency=args.provider_latency, log=log))
            figures = {"settings": settings, **summarise(rounds), "rounds": rounds}
            if not args.no_startup:
                log("startup figures ...")
                startup_env = {**env, "DATABASE_URL": database.copy(Path(tempfile.mkdtemp(dir=tmp)))}
                figures["startup"] = {
                    "without_preload": startup_figures(tmp, env=startup_env, preload=False),
                    "with_preload": startup_figures(tmp, env=startup_env, preload=True),
                }
    figures.setdefault("startup", {})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(figures, indent=2) + "\n")
    print_report(figures)
    print(f"\nwritten to {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    main()
