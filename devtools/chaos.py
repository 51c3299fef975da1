"""`make chaos`: machines and customers against a real Gunicorn under a seeded fault schedule, then
a money ledger.

    python -m devtools.chaos --seed 7 --seconds 180      # --help: every option

A throwaway PostgreSQL cluster (devtools/postgres.py), the fake provider as a process of its own
(its faults switched through `POST /control`), Gunicorn with GUNICORN_WORKERS workers and settings
short enough for every money flow to end within the run (the vend window, the make timeout,
reconciliation after a minute, holds of a minute). For `--seconds` the fleet (devtools/chaos_actors.py)
orders, pays and makes drinks while the schedule (devtools/chaos_faults.py) kills workers, restarts
PostgreSQL, fails the provider and its notifications, silences machines and runs reconciliation
twice at once. Then the faults stop, the last orders end, reconciliation runs (clock on by a
reconciliation interval each round, devtools/chaos_world.py) until a round changes nothing, and
the ledger (devtools/chaos_ledger.py) compares the provider's payments and refunds with the orders.

Besides the ledger's, violations are: a request of the fleet without an answer, unless a SIGKILL of
the worker holding its connection cut it; a 5xx other than 503, and a 503 outside the faults that
explain it (PostgreSQL restarts and provider faults, each with the wait the settings allow after
it); a reconciliation run that crashed (or, once the faults stopped, failed); a traceback in the
server's log; a webhook answer 5xx other than 503. Exit 1 on any.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coffee_payment.conf import load_settings
from coffee_payment.conf_values import DATABASE_CONNECT_TIMEOUT, Settings, provider_wait_longest
from devtools import postgres
from devtools.chaos_actors import Fleet, Timing
from devtools.chaos_faults import API_KINDS, KINDS, Injector, Kill, ReconcileRun, Window, command_run, schedule_build
from devtools.chaos_http import Client, Exchange
from devtools.chaos_ledger import Ledger, ledger_check, provider_objects
from devtools.chaos_world import shop_secrets
from devtools.processes import BIN, Server, base_environ, fake_provider, gunicorn, run

# What the server under chaos is given: money flows that end within seconds or a minute.
SERVER_SETTINGS = {
    "GUNICORN_TIMEOUT": "10", "DJANGO_LOG_LEVEL": "WARNING", "DJANGO_LOG_FORMAT": "json",
    "ORDER_MAKE_WINDOW_SECONDS": "10", "ORDER_MAKE_TIMEOUT_SECONDS": "60", "ORDER_RECONCILE_AFTER_MINUTES": "1",
    "ORDER_PROVIDER_RECHECK_SECONDS": "1", "ORDER_HOLD_MAX_MINUTES": "1", "DEVICE_OFFLINE_AFTER_SECONDS": "10",
}
# What each kind of request of the fleet may be answered, 503 aside: scans and payments of a
# machine gone silent get 409, so do late or repeated machine reports; a machine polls its order
# before it is scanned (404).
EXPECTED = {"scan": {200, 409}, "pay": {303, 409}, "confirm": {303}, "status-page": {200}, "status-poll": {200},
            "machine-poll": {200, 404}, "machine-report": {200, 409}}
# Orders in these statuses still have money on its way: a settled run has none (make_pending counts
# unless handed to the staff).
MOVING = frozenset({"paid", "held", "make_pending", "make_failed", "capture_pending", "cancel_pending",
                    "refund_pending"})
SETTLE_ROUNDS = 6
# The fleet's last orders end well within this many seconds after the faults' end (each step of an
# actor is bounded; this bounds them all).
RUN_MARGIN = 180.0
# Seconds to wait for the fake provider's notifications on their way (delayed, held back, repeated).
NOTIFICATIONS_DRAIN = 15.0


@dataclass(frozen=True)
class Options:
    seed: int = 1
    seconds: float = 180.0  # of faults and orders
    orders: int = 10_000  # at most, in all
    machines: int = 12
    workers: int = 3


@dataclass
class Report:
    options: Options
    began: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # "setup", "orders", "settling" -> seconds
    scheduled: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)  # "<kind> <status>"
    cut_by_kill: int = 0
    webhook: dict[str, Any] = field(default_factory=dict)
    reconcile_runs: list[ReconcileRun] = field(default_factory=list)
    settle_rounds: int = 0
    reconcile_cut: int = 0  # reconciliation runs a PostgreSQL restart killed
    ledger: Ledger = field(default_factory=Ledger)
    violations: list[str] = field(default_factory=list)
    logs: Path | None = None

    def text(self) -> str:
        o = self.options

        def counts(counter: Mapping[str, int]) -> str:
            return ", ".join(f"{key} {value}" for key, value in sorted(counter.items())) or "none"

        statuses = Counter(key.rsplit(" ", 1)[1] for key in self.answers.elements())
        lines = [
            f"chaos run: seed {o.seed}, {o.seconds:g} s of faults, {o.workers} workers, {o.machines} machines; "
            f"{self.seconds:.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in self.phases.items())})",
            f"faults injected: {counts(self.injected)}" + (f" (skipped: {counts(self.skipped)})" if self.skipped else ""),
            f"orders: {sum(self.ledger.orders.values())}: {counts(self.ledger.orders)}",
            f"provider: payments {counts(self.ledger.payments)}; refunds {counts(self.ledger.refunds)}; "
            f"kept {self.ledger.taken_kopecks / 100:.2f} RUB, refunded {self.ledger.returned_kopecks / 100:.2f} RUB",
            f"payments no order recorded, nothing taken: {len(self.ledger.unattached)}",
            f"requests: {sum(self.answers.values())} answered ({counts(statuses)}), "
            f"{self.cut_by_kill} cut by a SIGKILL of their worker",
            f"webhook answers: {counts(self.webhook.get('webhook_answers', {}))}; notification faults: "
            f"{counts(self.webhook.get('faulted', {}))}",
            f"reconciliation: {len(self.reconcile_runs)} runs, exit codes "
            f"{counts(Counter(str(r.returncode) for r in self.reconcile_runs))} ({self.reconcile_cut} cut by a "
            f"PostgreSQL restart); settled in {self.settle_rounds} rounds",
            f"staff: {len(self.ledger.staff)}" + "".join(f"\n  {line}" for line in self.ledger.staff),
            f"violations: {len(self.violations)}" + "".join(f"\n  {line}" for line in self.violations),
        ]
        if self.logs is not None:
            lines.append(f"logs: {self.logs}")
        return "\n".join(lines)


def server_environ(logs: Path, *, database_url: str, workers: int) -> dict[str, str]:
    secrets = ",".join(f"{shop}:{secret}" for shop, secret in shop_secrets().items())
    return base_environ(logs, DATABASE_URL=database_url, DJANGO_SETTINGS_MODULE="coffee_payment.settings",
                        GUNICORN_WORKERS=str(workers), PAYMENT_PROVIDER_SECRETS=secrets,
                        PAYMENT_PROVIDER_URL="http://127.0.0.1:9/v3", **SERVER_SETTINGS)


def tails(settings: Settings) -> dict[str, float]:
    """How long after a fault's end a request may still be answered 503 because of it: a request
    that waited for the database (the pool's wait, then one connection attempt), or a provider call
    with its retries."""
    provider = settings.provider
    waits = provider_wait_longest(connect=provider.connect_timeout, read=provider.read_timeout,
                                  retries=provider.retries)
    return {"postgres_restart": settings.database_wait_timeout + DATABASE_CONNECT_TIMEOUT,
            **{kind: waits for kind in API_KINDS}}


def exchanges_judge(exchanges: Sequence[Exchange], *, kills: Sequence[Kill], windows: Sequence[Window],
                    tail: Mapping[str, float]) -> tuple[Counter[str], int, list[str]]:
    """(answers by "<kind> <status>", requests cut by their worker's SIGKILL, violations)."""
    answers: Counter[str] = Counter()
    cut, violations = 0, []
    for exchange in exchanges:
        took = f"{exchange.ended - exchange.started:.1f} s"
        if exchange.status is None:
            if any(exchange.port in kill.ports and exchange.started <= kill.killed and exchange.ended >= kill.stopped
                   for kill in kills):
                cut += 1
            else:
                violations.append(f"{exchange.kind} request (client port {exchange.port}) got no answer: "
                                  f"{exchange.error} after {took}")
            continue
        answers[f"{exchange.kind} {exchange.status}"] += 1
        if exchange.status == 503:
            if not any(exchange.started <= window.end + tail[window.kind] and exchange.ended >= window.start
                       for window in windows):
                violations.append(f"{exchange.kind} request answered 503 outside any fault (after {took})")
        elif exchange.status not in EXPECTED[exchange.kind]:
            violations.append(f"{exchange.kind} request answered {exchange.status} after {took}")
    return answers, cut, violations


async def _control_state(control: Client, url: str) -> dict[str, Any]:
    reply = await control.request("control", url)
    if reply is None or reply.status != 200:
        raise RuntimeError(f"the fake provider's /control did not answer: {reply}")
    return reply.json()


async def _notifications_drained(control: Client, url: str) -> dict[str, Any]:
    """The fake's state once no notification is held back or on its way (at most NOTIFICATIONS_DRAIN s)."""
    ends = time.monotonic() + NOTIFICATIONS_DRAIN
    while (state := await _control_state(control, url))["held"] + state["sending"] and time.monotonic() < ends:
        await asyncio.sleep(0.2)
    return state


async def _settle(env: Mapping[str, str], *, step: float, control: Client, control_url: str
                  ) -> tuple[int, list[ReconcileRun], dict[str, Any], list[str]]:
    """Reconciliation rounds, each `step` seconds later than the one before (the first two at once),
    until a round changes nothing and no order has money on its way: (rounds, runs, the database
    as the last round left it, violations)."""
    runs: list[ReconcileRun] = []
    previous: dict[str, Any] | None = None
    for number in range(1, SETTLE_ROUNDS + 1):
        copies = 2 if number == 1 else 1
        done = await asyncio.gather(*(command_run(["-m", "devtools.chaos_world", "settle", "--ahead",
                                                   str(step * number)], env=env, during_faults=False)
                                      for _ in range(copies)))
        runs += done
        await _notifications_drained(control, control_url)
        dumped = await command_run(["-m", "devtools.chaos_world", "dump"], env=env, during_faults=False)
        if dumped.returncode != 0:
            return number, runs, {}, [f"the database could not be read: {dumped.stderr[-2000:]}"]
        database = json.loads(dumped.stdout)
        moving = [order["id"] for order in database["orders"]
                  if order["status"] in MOVING and not order["make_overdue"]]
        if database == previous and not moving:
            return number, runs, database, []
        previous = database
    return SETTLE_ROUNDS, runs, previous or {}, [
        f"not settled after {SETTLE_ROUNDS} reconciliation rounds: orders still moving {moving[:20]}"]


# What a reconciliation run dies of when PostgreSQL restarts under it: manage.py shows a database
# error met after connecting whole (coffee_payment/command_line.py), and the next run goes on.
DATABASE_GONE = re.compile(r"[\w.]*(OperationalError|InterfaceError|AdminShutdown): ")


def runs_judge(runs: Sequence[ReconcileRun], *, restarts: Sequence[Window], tail: float) -> tuple[int, list[str]]:
    """(runs a PostgreSQL restart cut, violations): a run may fail (exit 1) during the faults, when
    a provider call failed, and die of a restart that overlapped it; nothing else."""
    cut, violations = 0, []
    for each in runs:
        restarted = each.during_faults and any(each.started <= window.end + tail and each.ended >= window.start
                                               for window in restarts)
        last = (each.stderr.strip().splitlines() or [""])[-1]
        if restarted and each.returncode == 1 and DATABASE_GONE.match(last):
            cut += 1
            continue
        allowed = {0, 1} if each.during_faults else {0}  # 1: a provider call failed (the faults)
        if each.returncode not in allowed or "Traceback" in each.stderr:
            violations.append(f"`{each.command}` exited {each.returncode}"
                              f"{' (during the faults)' if each.during_faults else ''}: "
                              f"{(each.stderr or each.stdout).strip()[-600:]}")
    return cut, violations


def _tracebacks(logs: str) -> list[str]:
    return [line[:300] for line in logs.splitlines() if "Traceback" in line][:10]


async def _exercise(options: Options, *, server: Server, database_url: str, env: Mapping[str, str],
                    provider_url: str, world: dict[str, Any], settings: Settings, report: Report) -> None:
    """The faults and the fleet, then the settling and the ledger; fills `report`."""
    control_url = f"{provider_url}/control"
    # A machine shows an unpaid order for two vend windows; a late customer pays after that.
    patience = 2.0 * settings.order_make_window_seconds
    timing = Timing(poll=1.0, patience=patience, late=patience + 2)
    fleet_client = Client(timeout=settings.server.timeout + 5)
    start = time.monotonic()
    report.phases["setup"] = start - report.began
    machines = world["machines"]
    fleet = Fleet(url=server.url, machines=machines, drinks=[tuple(drink) for drink in world["drinks"]],
                  client=fleet_client, timing=timing, seed=options.seed, deadline=start + options.seconds,
                  budget=options.orders)
    schedule = schedule_build(random.Random(options.seed), seconds=options.seconds, machines=len(machines),
                              read_timeout=settings.provider.read_timeout,
                              silence=settings.device_offline_after_seconds + settings.device_seen_interval_seconds
                              + patience + timing.arrive[1])
    report.scheduled = Counter(fault.kind for fault in schedule)
    injector = Injector(server=server, database_url=database_url, env=env, control_url=control_url,
                        silent_until=fleet.silent_until)
    try:
        async with asyncio.timeout(options.seconds + RUN_MARGIN), asyncio.TaskGroup() as group:
            group.create_task(injector.run(schedule, start=start))
            group.create_task(fleet.run())
    except TimeoutError:
        report.violations.append(f"the fleet was still busy {RUN_MARGIN:g} s after the faults' end: cut")
    report.injected, report.skipped = injector.injected, injector.skipped
    report.reconcile_runs += injector.reconcile_runs
    answers, report.cut_by_kill, violations = exchanges_judge(
        fleet_client.exchanges, kills=injector.kills, windows=injector.windows, tail=tails(settings))
    report.answers = answers
    report.violations += violations

    report.phases["orders"] = time.monotonic() - start
    control = Client(timeout=10)
    await _notifications_drained(control, control_url)
    step = settings.order_reconcile_after_minutes * 60 + 5
    report.settle_rounds, runs, database, violations = await _settle(env, step=step, control=control,
                                                                     control_url=control_url)
    report.reconcile_runs += runs
    report.violations += violations
    restarts = [window for window in injector.windows if window.kind == "postgres_restart"]
    report.reconcile_cut, violations = runs_judge(report.reconcile_runs, restarts=restarts,
                                                  tail=tails(settings)["postgres_restart"])
    report.violations += violations
    report.webhook = await _control_state(control, control_url)
    report.violations += [f"the webhook answered {status} {count} times" for status, count in
                          report.webhook["webhook_answers"].items() if status.isdigit() and int(status) >= 500
                          and status != "503"]
    api_url, shops = f"{provider_url}/v3", shop_secrets()
    payments = await provider_objects(control, api_url=api_url, shops=shops, what="payments")
    refunds = await provider_objects(control, api_url=api_url, shops=shops, what="refunds")
    report.ledger = ledger_check(payments=payments, refunds=refunds, database=database, records=fleet.orders)
    report.violations += report.ledger.violations
    report.phases["settling"] = time.monotonic() - start - report.phases["orders"]


def chaos_run(options: Options, *, logs: Path) -> Report:
    """One run, its processes and cluster started here and always stopped; its logs in `logs`."""
    report = Report(options=options, logs=logs)
    with postgres.cluster() as database_url:
        env = server_environ(logs, database_url=database_url, workers=options.workers)
        for command in (["manage.py", "migrate", "--noinput"],
                        ["-m", "devtools.chaos_world", "seed", "--machines", str(options.machines)]):
            result = run([str(BIN / "python"), *command], env=env, timeout=120)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed: {result.stderr[-2000:]}")
        world = json.loads(result.stdout)
        webhook = f"http://127.0.0.1:{env['GUNICORN_PORT']}/v1/payments/webhook"
        credentials = ",".join(f"{shop}:{secret}" for shop, secret in shop_secrets().items())
        with fake_provider(logs, "--credentials", credentials, "--webhook-url", webhook,
                           "--sbp-refund-seconds", "1") as provider:
            env["PAYMENT_PROVIDER_URL"] = f"{provider.url}/v3"
            settings = load_settings(environ=env)
            with gunicorn(logs, env=env) as server:
                server.wait_for_workers(options.workers)
                asyncio.run(_exercise(options, server=server, database_url=database_url, env=env,
                                      provider_url=provider.url, world=world, settings=settings, report=report))
                report.violations += [f"server log: {line}" for line in _tracebacks(server.logs())]
    report.seconds = time.monotonic() - report.began
    return report


def _positive(kind: type, high: float) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not 0 < value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__} in 1..{high:g}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.chaos", description=__doc__.split("\n\n")[0],
                                     epilog="Faults: " + ", ".join(KINDS) + ".")
    parser.add_argument("--seed", type=int, default=Options.seed, help="of the schedule and the fleet's plans")
    parser.add_argument("--seconds", type=_positive(float, 3600), default=Options.seconds,
                        help=f"of faults and new orders (default {Options.seconds:g})")
    parser.add_argument("--orders", type=_positive(int, 100_000), default=Options.orders, help="at most, in all")
    parser.add_argument("--machines", type=_positive(int, 60), default=Options.machines,
                        help=f"simulated machines, dealt round three shops (default {Options.machines})")
    parser.add_argument("--workers", type=_positive(int, 8), default=Options.workers,
                        help=f"GUNICORN_WORKERS (default {Options.workers})")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs even when the run is clean")
    args = parser.parse_args(argv)
    options = Options(seed=args.seed, seconds=args.seconds, orders=args.orders, machines=args.machines,
                      workers=args.workers)
    logs = Path(tempfile.mkdtemp(prefix="coffee-chaos-"))
    report = chaos_run(options, logs=logs)
    if not report.violations and not args.keep_logs:
        shutil.rmtree(logs, ignore_errors=True)
        report.logs = None
    print(report.text())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
