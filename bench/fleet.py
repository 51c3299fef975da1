"""`make bench-fleet`: a fleet of machines and customers, offered open-loop, on PostgreSQL.

Four servers of the same project, one after the other, each with the same worker count, settings
layer (production), fake provider latency and a fresh copy of the same seeded database:
`stack` (gunicorn -c config/gunicorn.py), `sync` (Gunicorn's sync workers, coffee_payment.wsgi),
`stock` (the same Gunicorn settings with the stock `uvicorn_worker.UvicornWorker` and Django's own
ASGI handler, bench/django_asgi.py) and `granian` (Granian serving bench/django_asgi.py, an
outside reference).

Two sweeps per server, each a ladder of fixed offered loads (bench/fleet_load.py, open loop):
- polls: machines poll their orders and status pages poll theirs, half the offered rate each;
- payments: customers arrive at a fixed rate (scan, pay, confirm at the provider, the status page
  and its polls until paid) while a background fleet polls; the fake provider never sends the
  notification of --lost-notifications of the payments, so the status page's own provider read
  confirms those. Each step reports the confirmation latency (confirm -> the page shows paid).
A load misses when its p99 is over target or more than 1 % of its requests failed; a missed load
is tried once more. A ladder stops after two loads in a row missed, then tries the geometric middle
between the last load that held and the first that missed. The capacity is the
highest load that held. Then the stack gets each sweep's load at half its capacity for it (polls
alone; customers with the background fleet): the loads of the latency targets. Figures go to
bench/results/fleet.json, fleet.md and fleet.png (bench/fleet_report.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.databases import Seeded
from bench.fleet_load import Machine, Plan, run_plan_sync
from bench.fleet_metrics import group_cpu_seconds, machine_busy_seconds, metrics_delta, metrics_snapshot
from bench.run import PROVIDER_SHOP, RESULTS, production_environ
from devtools import postgres
from devtools.processes import BIN, REPO, STOCK_WORKER, Server, fake_provider, gunicorn, serving

POLL_P99_MS = 50.0
FAILURE_SHARE = 0.01
STOCK_APP = "bench.django_asgi:application"


@dataclass(frozen=True)
class FleetServer:
    name: str
    description: str
    start: Callable[[Path, dict[str, str], int], Any]  # (logs, env, workers) -> context manager of a Server


def _gunicorn(*args: str, app: str | None = None, worker_class: str | None = None) -> Callable[..., Any]:
    return lambda logs, env, workers: gunicorn(logs, env=env, args=args, app=app, worker_class=worker_class)


def _granian(logs: Path, env: dict[str, str], workers: int) -> Any:
    port = int(env["GUNICORN_PORT"])  # where the fake provider notifies and the customers come back
    # --access-log: Gunicorn's servers write one JSON access line per request too.
    command = [str(BIN / "granian"), "--interface", "asginl", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--access-log", STOCK_APP]
    return serving(logs, "granian", command, env={**env, "GUNICORN_PORT": str(port)}, port=port)


SERVERS = {
    server.name: server for server in (
        FleetServer("stack", "gunicorn -c config/gunicorn.py (DrainingUvicornWorker, coffee_payment.asgi)",
                    _gunicorn()),
        FleetServer("sync", "the same Gunicorn settings, sync workers, coffee_payment.wsgi",
                    _gunicorn("--worker-class", "sync", app="coffee_payment.wsgi:application")),
        FleetServer("stock", f"the same Gunicorn settings, {STOCK_WORKER}, Django's get_asgi_application()",
                    _gunicorn(worker_class=STOCK_WORKER, app=STOCK_APP)),
        FleetServer("granian", "Granian (ASGI, no lifespan), Django's get_asgi_application()", _granian),
    )
}


@dataclass(frozen=True)
class Given:
    """A migrated database the caller made (--database-url): every server serves it in turn."""

    url: str

    def copy(self, directory: Path) -> str:
        return self.url


@contextmanager
def fleet_database(kind: str, *, tmp: Path, env: dict[str, str], machines: int,
                   given: str | None = None) -> Iterator[tuple[Seeded | Given, list[Machine]]]:
    """The seeded template database (bench/fleet_seed.py) and its machines: migrated here, or
    `given` migrated already."""
    def seed(database: Seeded | Given, *, migrate: bool = True) -> tuple[Seeded | Given, list[Machine]]:
        seeded_env = {**env, "DATABASE_URL": database.url}
        out = tmp / "fleet.json"
        commands = [["manage.py", "migrate", "--noinput"]] if migrate else []
        for command in [*commands, ["-m", "bench.fleet_seed", f"--machines={machines}", f"--out={out}"]]:
            subprocess.run([str(BIN / "python"), *command], cwd=REPO, env=seeded_env, check=True,
                           capture_output=True, timeout=300)
        return database, [Machine(**entry) for entry in json.loads(out.read_text())["machines"]]

    if given is not None:
        yield seed(Given(given), migrate=False)
    elif kind == "sqlite":
        yield seed(Seeded(kind, f"sqlite:///{tmp / 'seeded.sqlite3'}"))
    else:
        with postgres.cluster() as url:
            yield seed(Seeded(kind, url))


@dataclass(frozen=True)
class Settings:
    seconds: float
    machine_interval: float
    status_interval: float
    provider_latency: float
    lost_notifications: float
    background_machines: int
    timeout: float
    max_in_flight: int

    @property
    def payment_p99_ms(self) -> float:
        return self.provider_latency * 1000 + 100


def poll_plan(rate: float, *, machines: list[Machine], settings: Settings, seed: int) -> Plan:
    """`rate` polls per second: half from machines, half from status pages (of the machines' orders)."""
    count = round(rate / 2 * settings.machine_interval)
    pages = round(rate / 2 * settings.status_interval)
    return Plan(seconds=settings.seconds, machines=machines[:count], machine_interval=settings.machine_interval,
                status_pages=[m.order for m in machines[:pages]], status_interval=settings.status_interval, seed=seed)


def payment_plan(rate: float, *, machines: list[Machine], settings: Settings, seed: int, prefix: str) -> Plan:
    """`rate` customers per second at the fleet's machines, while the background fleet polls."""
    return Plan(seconds=settings.seconds, machines=machines[:settings.background_machines],
                machine_interval=settings.machine_interval, customers_per_s=rate,
                customer_devices=[m.device for m in machines], customer_poll_interval=settings.status_interval,
                order_prefix=prefix, seed=seed)


def failure_share(result: dict[str, Any], kinds: tuple[str, ...]) -> float:
    rows = [result["kinds"][k] for k in kinds if k in result["kinds"]]
    planned = sum(r["planned"] for r in rows)
    return sum(r["failed"] for r in rows) / planned if planned else 0.0


def held(result: dict[str, Any], kinds: tuple[str, ...], limit_ms: float) -> bool:
    """Every kind's p99 under `limit_ms` and at most FAILURE_SHARE of its requests failed."""
    if result["cut_at_cap"] or failure_share(result, kinds) > FAILURE_SHARE:
        return False
    return all((p99 := result["kinds"][k]["p99_ms"]) is not None and p99 < limit_ms
               for k in kinds if k in result["kinds"])


POLL_KINDS = ("machine-poll", "status-poll")
PAYMENT_KINDS = ("scan", "payment")


def idle_cpu_per_s(server: Server, *, seconds: float = 1.0) -> float:
    """CPU seconds per second the server's processes spend with nothing to answer."""
    cpu = group_cpu_seconds(server.process.pid)
    time.sleep(seconds)
    return (group_cpu_seconds(server.process.pid) - cpu) / seconds


def measured(server: Server, plan: Plan, *, settings: Settings, idle: float) -> dict[str, Any]:
    """run_plan's figures plus the server's: /metrics, the load average, and its CPU per answered
    request beyond what it spends idle (`idle` CPU seconds per second); beside it, the CPU per
    answer of the generator (this process) and of everything else (fake provider, PostgreSQL)."""
    before, cpu, began = metrics_snapshot(server.metrics_url), group_cpu_seconds(server.process.pid), time.monotonic()
    machine, generator = machine_busy_seconds(), time.process_time()
    result = run_plan_sync(server.url, plan, timeout=settings.timeout, max_in_flight=settings.max_in_flight)
    elapsed = time.monotonic() - began
    generator = time.process_time() - generator
    cpu = group_cpu_seconds(server.process.pid) - cpu
    rest = machine_busy_seconds() - machine - cpu - generator
    cpu -= idle * elapsed
    answered = sum(row["ok"] for row in result["kinds"].values())

    def per_answer(seconds: float) -> float | None:
        return round(1000 * seconds / answered, 2) if answered else None

    return {**result, "load_average": os.getloadavg()[0], "server_cpu_s": round(cpu, 2),
            "cpu_ms_per_answer": per_answer(cpu), "generator_cpu_ms_per_answer": per_answer(generator),
            "rest_cpu_ms_per_answer": per_answer(rest), "machine_busy_share": round(
                (cpu + idle * elapsed + generator + rest) / (elapsed * (os.cpu_count() or 1)), 2),
            "server_metrics": metrics_delta(before, metrics_snapshot(server.metrics_url))}


def sweep(server: Server, levels: list[float], *, make_plan: Callable[[float, int], Plan],
          passes: Callable[[dict[str, Any]], bool], settings: Settings, idle: float,
          log: Callable[[str], None]) -> list[dict]:
    """Run the ladder until two loads in a row miss (each tried twice), then the geometric middle
    between the last load that held and the first that missed after it."""
    steps: list[dict] = []

    def step(level: float) -> bool:
        result = measured(server, make_plan(level, len(steps) + 1), settings=settings, idle=idle)
        ok = passes(result)
        steps.append({"level": level, "held": ok, **result})
        kinds = "  ".join(f"{k} p99 {r['p99_ms']} ms ({r['ok']}/{r['planned']})" for k, r in result["kinds"].items())
        if confirmation := result.get("confirmation"):
            kinds += (f"  confirm -> paid p50 {confirmation['p50_ms']} p99 {confirmation['p99_ms']} ms "
                      f"({confirmation['confirmed']} shown paid, {confirmation['unconfirmed']} not)")
        log(f"    {level:>7g}/s {'held  ' if ok else 'MISSED'} {kinds}  cpu/request {result['cpu_ms_per_answer']} ms")
        time.sleep(1)  # what the step left queued drains before the next one
        return ok

    last_held, missed_in_a_row, first_missed = None, 0, None
    for level in levels:
        # A miss is tried once more: on a shared machine one burst of someone else's work can sink
        # a step. Both tries are reported; the load holds if the second does.
        if step(level) or step(level):
            last_held, missed_in_a_row, first_missed = level, 0, None
            continue
        missed_in_a_row += 1
        first_missed = first_missed or level
        # Two loads in a row missed: past the knee, the rest would only queue (and take time).
        if missed_in_a_row == 2:
            break
    if last_held is not None and first_missed is not None:
        middle = round(math.sqrt(last_held * first_missed), 1)
        if middle not in (last_held, first_missed):
            step(middle)
    return steps


def capacity(steps: list[dict], kinds: tuple[str, ...] | None = None, limit_ms: float | None = None) -> float:
    """The highest load that held on some try (0 when none did); for `kinds` under `limit_ms` if given."""
    def ok(step: dict) -> bool:
        return step["held"] if kinds is None else held(step, kinds, limit_ms)  # type: ignore[arg-type]

    return max((step["level"] for step in steps if ok(step)), default=0.0)


@contextmanager
def running(server: FleetServer, tmp: Path, *, env: dict[str, str], database: Seeded | Given, workers: int,
            settings: Settings) -> Iterator[Server]:
    logs = Path(tempfile.mkdtemp(dir=tmp))
    webhook = f"http://127.0.0.1:{env['GUNICORN_PORT']}/v1/payments/webhook"
    with fake_provider(logs, "--latency", str(settings.provider_latency), "--credentials", PROVIDER_SHOP,
                       "--webhook-url", webhook, "--lost-notifications", str(settings.lost_notifications)) as provider:
        server_env = {**env, "DATABASE_URL": database.copy(logs), "PAYMENT_PROVIDER_URL": provider.url + "/v3"}
        with server.start(logs, server_env, workers) as process:
            yield process


def machine_description(database: str) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "0")
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    description = {"nproc": int(nproc or 0), "cpu": cpu, "memory_gib": round(int(memory) / 2**20, 1),
                   "kernel": os.uname().release, "python": sys.version.split()[0],
                   "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    if database == "postgres":
        version = subprocess.run([str(postgres.bindir() / "postgres"), "--version"], capture_output=True, text=True,
                                 check=False)
        description["postgresql"] = version.stdout.strip()
    return description


def parse_levels(text: str) -> list[float]:
    try:
        levels = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated numbers") from None
    if not levels or any(b <= a for a, b in zip(levels, levels[1:])) or levels[0] <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not positive numbers in increasing order")
    return levels


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of: " + ", ".join(SERVERS))
    parser.add_argument("--workers", type=int, default=4, help="worker processes of every server")
    parser.add_argument("--seconds", type=float, default=4, help="arrivals per load step")
    parser.add_argument("--poll-levels", type=parse_levels, default=[25, 50, 100, 200, 400, 800, 1600],
                        help="offered polls per second (half machines, half status pages)")
    parser.add_argument("--payment-levels", type=parse_levels, default=[1, 2, 4, 8, 16, 32, 64, 128, 256],
                        help="offered customers (scan + payment) per second")
    parser.add_argument("--machine-interval", type=float, default=5, help="seconds between a machine's polls")
    parser.add_argument("--status-interval", type=float, default=2,
                        help="seconds between a status page's polls (status.html: 2)")
    parser.add_argument("--background-machines", type=int, default=100, help="machines polling during payments")
    parser.add_argument("--provider-latency", type=float, default=0.3, help="fake provider's seconds per call")
    parser.add_argument("--lost-notifications", type=float, default=0.2,
                        help="share of payments whose notification the fake provider never sends (0..1)")
    parser.add_argument("--timeout", type=float, default=5, help="seconds before a request counts as failed")
    parser.add_argument("--max-in-flight", type=int, default=1000, help="requests at once; past it one is dropped")
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres",
                        help="postgres: a throwaway cluster (needs PostgreSQL's server binaries); sqlite: a file")
    parser.add_argument("--database-url", help="a migrated database to seed and serve instead (every server in "
                        "turn, no copies; the smoke test's)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for fleet.json, fleet.md, fleet.png")
    parser.add_argument("--no-half", action="store_true", help="skip the stack's run at half its capacities")
    parser.add_argument("--no-plot", action="store_true", help="no fleet.png (needs matplotlib)")
    parser.add_argument("--note", default="", help="a sentence for the report, e.g. who else used the machine")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.servers.split(",") if name.strip()]
    if unknown := set(names) - set(SERVERS):
        parser.error(f"unknown server(s) {', '.join(sorted(unknown))} (allowed: {', '.join(SERVERS)})")
    if not 0 <= args.lost_notifications <= 1:
        parser.error(f"--lost-notifications {args.lost_notifications:g} is not a share (allowed: 0..1)")
    settings = Settings(seconds=args.seconds, machine_interval=args.machine_interval,
                        status_interval=args.status_interval, provider_latency=args.provider_latency,
                        lost_notifications=args.lost_notifications,
                        background_machines=args.background_machines, timeout=args.timeout,
                        max_in_flight=args.max_in_flight)
    machines_needed = max(round(args.poll_levels[-1] / 2 * max(args.machine_interval, args.status_interval)),
                          args.background_machines, 1)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    began = time.monotonic()
    figures: dict[str, Any] = {
        "settings": {**vars(settings), "workers": args.workers, "machines": machines_needed,
                     "poll_levels": args.poll_levels, "payment_levels": args.payment_levels,
                     "database": args.database, "host": "127.0.0.1", "layer": "production (JSON logs, DEBUG off)",
                     "poll_p99_target_ms": POLL_P99_MS, "payment_p99_target_ms": settings.payment_p99_ms,
                     "failure_share_limit": FAILURE_SHARE, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "note": args.note},
        "machine": machine_description(args.database),
        "servers": {},
    }
    with tempfile.TemporaryDirectory(prefix="coffee-fleet-") as tmp_name:
        tmp = Path(tmp_name)
        env = production_environ(tmp, workers=args.workers)
        log(f"seeding {machines_needed} machines on {'the given database' if args.database_url else args.database} ...")
        with fleet_database(args.database, tmp=tmp, env=env, machines=machines_needed,
                            given=args.database_url) as (database, machines):
            for name in names:
                server = SERVERS[name]
                log(f"{name}: {server.description}")
                with running(server, tmp, env=env, database=database, workers=args.workers,
                             settings=settings) as process:
                    # Two light seconds of everything on many connections, so every worker has answered
                    # and filled its pools and caches before anything is measured, as in a server that runs.
                    light = poll_plan(args.poll_levels[0], machines=machines, settings=settings, seed=0)
                    warm = payment_plan(args.payment_levels[0], machines=machines, settings=settings, seed=0,
                                        prefix=f"fleet-{name}-warm-")
                    run_plan_sync(process.url, dataclasses.replace(warm, seconds=2, machines=light.machines,
                                                                   status_pages=light.status_pages),
                                  timeout=args.timeout)
                    idle = idle_cpu_per_s(process)
                    log(f"  polls (idle: {idle * 1000:.0f} ms of CPU per second)")
                    polls = sweep(process, args.poll_levels, settings=settings, idle=idle, log=log,
                                  make_plan=lambda rate, n: poll_plan(rate, machines=machines, settings=settings,
                                                                      seed=n),
                                  passes=lambda result: held(result, POLL_KINDS, POLL_P99_MS))
                    log("  payments")
                    payments = sweep(process, args.payment_levels, settings=settings, idle=idle, log=log,
                                     make_plan=lambda rate, n: payment_plan(rate, machines=machines, settings=settings,
                                                                            seed=n, prefix=f"fleet-{name}-c{n}-"),
                                     passes=lambda result: held(result, ("payment",), settings.payment_p99_ms)
                                     and failure_share(result, PAYMENT_KINDS) <= FAILURE_SHARE)
                    entry: dict[str, Any] = {
                        "description": server.description, "idle_cpu_ms_per_s": round(idle * 1000, 1),
                        "polls": polls, "payments": payments,
                        "capacity": {"polls_per_s": capacity(polls),
                                     "order_status_per_s": capacity(polls, ("status-poll",), POLL_P99_MS) / 2,
                                     "machine_poll_per_s": capacity(polls, ("machine-poll",), POLL_P99_MS) / 2,
                                     "payments_per_s": capacity(payments)},
                    }
                    if name == "stack" and not args.no_half:
                        entry["half_capacity"] = half_capacity(process, entry["capacity"], machines=machines,
                                                               settings=settings, idle=idle, log=log)
                    figures["servers"][name] = entry
    figures["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    figures["elapsed_s"] = round(time.monotonic() - began, 1)
    from bench.fleet_report import targets, write_report

    figures["targets"] = targets(figures)
    write_report(figures, out=args.out, with_plot=not args.no_plot)
    log(f"written to {args.out}/fleet.json, fleet.md{'' if args.no_plot else ', fleet.png'}")
    return figures


def half_capacity(server: Server, capacities: dict[str, float], *, machines: list[Machine], settings: Settings,
                  idle: float, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Each sweep again at half the stack's capacity for it: polls alone, then customers with the
    background fleet. (Both at once would be half of one plus half of the other: all of it.)"""
    polls, payments = capacities["polls_per_s"] / 2, capacities["payments_per_s"] / 2
    if not polls or not payments:
        return None
    poll_step = measured(server, poll_plan(polls, machines=machines, settings=settings, seed=99),
                         settings=settings, idle=idle)
    payment_step = measured(server, payment_plan(payments, machines=machines, settings=settings, seed=98,
                                                 prefix="fleet-stack-half-"), settings=settings, idle=idle)
    log(f"  half capacity: polls {polls:g}/s, then customers {payments:g}/s: "
        + "  ".join(f"{k} p99 {r['p99_ms']} ms"
                    for step in (poll_step, payment_step) for k, r in step["kinds"].items())
        + f"  confirm -> paid p99 {payment_step['confirmation']['p99_ms']} ms")
    return {"polls_per_s": polls, "customers_per_s": payments, "polls": poll_step, "payments": payment_step}


if __name__ == "__main__":
    main()
