"""The fleet benchmark's report: targets, fleet.json, fleet.md and the plot fleet.png."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

METHOD = """\
How: bench/fleet.py, `make bench-fleet`. Every server in turn gets the same worker count, production
settings layer, fake provider latency and a fresh copy of one seeded PostgreSQL database (the
throwaway cluster of the tests: fsync off), on loopback. The load is open-loop (bench/fleet_load.py):
every request has a send time planned before the run, and its latency runs from that planned time
to the answer, so queueing behind a slow server is measured instead of hidden (coordinated
omission). `lag p99` is how late the generator itself sent: where it is large, the client (sharing
the same cores) and not only the server was behind.

Why a generator of our own: Debian packages wrk (closed loop: a connection sends when answered),
hey (a rate per worker, still waiting for each answer) and siege (closed loop); locust users are
closed loops too. The open-loop tools that correct for coordinated omission (wrk2, vegeta, oha, k6)
are neither in Debian nor on PyPI, the only registries this project installs from. Ours is ~200
lines of asyncio + aiohttp (already a dependency), on uvloop.

Sweeps: `polls` offers machine polls (`GET /v1/machine/orders/<id>`, bearer token) and status-page
polls (`GET /v1/order-status/<id>`), half each; `payments` offers customers (Poisson arrivals; each
scans `GET /v1/pay`, pays `POST /v1/orders/<id>/payment`, confirms on the fake provider's page,
comes back to the status page `GET /v1/orders/<id>` and polls its status 1 s later, then every 2 s,
until it shows paid) while a background fleet polls. The fake provider never sends the
notification of a share of the payments: those are confirmed by the status page's own provider
read. `confirm -> paid`: from the confirmation's send to the answer that first showed paid. A load misses when its p99 is over target or more than 1 % of its requests
failed; a missed load is tried once more (a shared machine has bursts). A ladder stops after two
loads in a row missed, then tries the geometric middle between the last load that held and the
first that missed. Capacity = the highest offered load that held (on either try). The latency
targets are read at half the stack's capacity: each sweep once more, alone, at half its capacity.
Server-side figures come from `/metrics` when the server has it ("n/a" when it answers 404)."""


def _ratio(figures: dict[str, Any], key: str) -> tuple[float | None, bool, str]:
    """(stack / sync capacity, whether that is only a lower bound, how it was made)."""
    servers = figures["servers"]
    if "stack" not in servers or "sync" not in servers:
        return None, False, "not measured"
    stack, sync = servers["stack"]["capacity"][key], servers["sync"]["capacity"][key]
    if sync:
        return round(stack / sync, 2), False, f"{stack:g} / {sync:g}"
    # sync held not even the lowest load: the ratio is at least stack / lowest.
    lowest = figures["settings"]["payment_levels" if key == "payments_per_s" else "poll_levels"][0]
    if key != "payments_per_s":
        lowest /= 2
    return (round(stack / lowest, 2) if stack else None), True, f"{stack:g} / below {lowest:g} (a lower bound)"


def targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue: its figure, whether it is met ("met", "missed", "not measured")."""
    settings = figures["settings"]
    rows: list[dict[str, Any]] = []

    def add(description: str, value: float | None, passes: bool | None, detail: str = "") -> None:
        verdict = "not measured" if value is None or passes is None else ("met" if passes else "missed")
        rows.append({"target": description, "value": value, "detail": detail, "verdict": verdict})

    half = figures["servers"].get("stack", {}).get("half_capacity")
    kinds = {**half["payments"]["kinds"], **half["polls"]["kinds"]} if half else {}
    why = "" if half else "not run: the stack held no load of one of the sweeps"
    for kind in ("machine-poll", "status-poll"):
        p99 = kinds.get(kind, {}).get("p99_ms")
        add(f"{kind} p99 < {settings['poll_p99_target_ms']:g} ms at half the stack's capacity", p99,
            None if p99 is None else p99 < settings["poll_p99_target_ms"], why)
    p99 = kinds.get("payment", {}).get("p99_ms")
    add(f"payment p99 < {settings['payment_p99_target_ms']:g} ms (provider + 100) at half the stack's capacity",
        p99, None if p99 is None else p99 < settings["payment_p99_target_ms"], why)
    confirmation = half["payments"].get("confirmation", {}) if half else {}
    p99, unconfirmed = confirmation.get("p99_ms"), confirmation.get("unconfirmed", 0)
    add(f"confirm -> paid p99 <= 5000 ms at half the stack's capacity, {settings['lost_notifications']:.0%} of "
        "notifications lost", p99, None if p99 is None else p99 <= 5000 and not unconfirmed,
        why or f"p50 {_cell(confirmation.get('p50_ms'))} ms; {confirmation.get('confirmed', 0)} customers shown paid, "
        f"{unconfirmed} not within their polls")
    for key, minimum, what in (("payments_per_s", 30, "payment"), ("order_status_per_s", 2, "order-status")):
        ratio, bound, detail = _ratio(figures, key)
        description = f"{what} capacity stack/sync >= {minimum}"
        if bound and ratio is not None and ratio < minimum:
            # A lower bound under the target shows nothing either way.
            rows.append({"target": description, "value": ratio, "detail": detail,
                         "verdict": "not shown: sync held no load offered"})
            continue
        if key == "payments_per_s" and (ceiling := payment_ceiling(figures)):
            detail += (f"; outside the server, {ceiling['outside_cpu_ms_per_customer']:g} ms of CPU per customer "
                       f"(at {ceiling['level']:g}/s): a server using none would get at most "
                       f"{ceiling['customers_per_s_at_most']:g}/s on this machine")
        add(description, ratio, None if ratio is None else ratio >= minimum, detail)
    return rows


def _median_cpu(steps: list[dict[str, Any]], key: str = "cpu_ms_per_answer") -> float | None:
    values = [s[key] for s in steps if s.get(key) is not None]
    return round(statistics.median(values), 2) if values else None


def payment_ceiling(figures: dict[str, Any]) -> dict[str, float] | None:
    """What the machine could offer a server that took no CPU at all: at the stack's highest held
    payment load, the generator's and the rest's (fake provider, PostgreSQL) CPU per customer
    (its background polls included), and how many customers per second the cores hold at that."""
    stack, nproc = figures["servers"].get("stack"), figures["machine"]["nproc"]
    held = [s for s in (stack or {}).get("payments", []) if s["held"] and s.get("rest_cpu_ms_per_answer") is not None]
    if not held or not nproc:
        return None
    step = max(held, key=lambda s: s["level"])
    answered = sum(row["ok"] for row in step["kinds"].values())
    customers = step["kinds"]["payment"]["ok"]
    if not customers:
        return None
    per_customer = (step["generator_cpu_ms_per_answer"] + step["rest_cpu_ms_per_answer"]) * answered / customers
    return {"level": step["level"], "outside_cpu_ms_per_customer": round(per_customer, 1),
            "customers_per_s_at_most": round(nproc * 1000 / per_customer, 1)}


def _confirmation_row(confirmation: dict[str, Any]) -> dict[str, Any]:
    """A step's confirmation latencies as a row of the steps table: `ok` the customers shown paid."""
    missed = {k: confirmation[k] for k in ("unconfirmed", "failed") if confirmation[k]}
    return {**confirmation, "ok": confirmation["confirmed"], "planned": confirmation["confirmed"] + sum(missed.values()),
            "failures": missed, "lag_p99_ms": None}


def _cell(value: Any) -> str:
    return "—" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def markdown(figures: dict[str, Any]) -> str:
    settings, machine = figures["settings"], figures["machine"]
    lines = [
        "# Fleet benchmark", "",
        f"Run {settings['date']}, {figures.get('elapsed_s', '?')} s. " + (settings["note"] or ""), "",
        "## Machine", "",
        f"- nproc {machine['nproc']}, {machine['cpu']}, {machine['memory_gib']} GiB, Linux {machine['kernel']}, "
        f"Python {machine['python']}, {machine.get('postgresql', settings['database'])}",
        f"- load average (1, 5, 15 min) at the start {machine['load_average_at_start']}, at the end "
        f"{machine.get('load_average_at_end')}; per step in the tables below",
        "", "## Settings", "",
        f"- {settings['workers']} workers per server, {settings['seconds']:g} s of arrivals per step, request "
        f"timeout {settings['timeout']:g} s, at most {settings['max_in_flight']} requests in flight",
        f"- machines poll every {settings['machine_interval']:g} s, status pages every "
        f"{settings['status_interval']:g} s; {settings['machines']} machines seeded; "
        f"{settings['background_machines']} machines poll during the payment sweep",
        f"- fake provider latency {settings['provider_latency'] * 1000:g} ms, "
        f"{settings['lost_notifications']:.0%} of payments' notifications never sent; targets: poll p99 < "
        f"{settings['poll_p99_target_ms']:g} ms, payment p99 < {settings['payment_p99_target_ms']:g} ms, "
        f"failures <= {settings['failure_share_limit']:.0%}",
        "", METHOD, "", "## Capacity", "",
        "| Server | What | polls/s | order-status/s | machine polls/s | payments/s | CPU ms/answer, polls "
        "| CPU ms/answer, payments | generator + rest, polls | generator + rest, payments |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, server in figures["servers"].items():
        c = server["capacity"]
        outside = [" + ".join(_cell(_median_cpu(server[sweep], key))
                              for key in ("generator_cpu_ms_per_answer", "rest_cpu_ms_per_answer"))
                   for sweep in ("polls", "payments")]
        lines.append(f"| {name} | {server['description']} | {c['polls_per_s']:g} | {c['order_status_per_s']:g} | "
                     f"{c['machine_poll_per_s']:g} | {c['payments_per_s']:g} | {_cell(_median_cpu(server['polls']))} | "
                     f"{_cell(_median_cpu(server['payments']))} | {outside[0]} | {outside[1]} |")
    lines += ["", "0 = not even the lowest offered load held. CPU: the server's processes' user + system time "
              "per answered request, beyond what they spend idle (measured for 1 s before the sweeps), median "
              "over the sweep's steps: less sensitive to the machine's other work than latency is. Beside it, "
              "on the same cores: the generator (the benchmark's process) and the rest of the machine's busy "
              "time (/proc/stat: the fake provider, PostgreSQL, anything else running).", "", "## Targets", "",
              "| Target | Figure | | Verdict |", "|---|---|---|---|"]
    for row in figures.get("targets", []):
        lines.append(f"| {row['target']} | {_cell(row['value'])} | {row['detail']} | {row['verdict']} |")
    lines += ["", "## Steps", "",
              "Latency in ms from the planned send time; `ok/planned` per kind; `lag` the generator's p99 lag; "
              "`busy` the share of the machine's cores busy during the step; `server p99` from /metrics "
              "(a bucket bound).", "",
              "| Server | Sweep | Offered | Kind | ok/planned | p50 | p90 | p99 | max | lag | failures | load avg "
              "| CPU ms/answer | busy | server p99 | Held |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, server in figures["servers"].items():
        steps = [("polls", s) for s in server["polls"]] + [("payments", s) for s in server["payments"]]
        if server.get("half_capacity"):
            half = server["half_capacity"]
            steps += [("half, polls", {**half["polls"], "level": half["polls_per_s"], "held": "—"}),
                      ("half, payments", {**half["payments"], "level": half["customers_per_s"], "held": "—"})]
        for sweep, step in steps:
            metrics = step["server_metrics"]
            server_p99 = metrics if isinstance(metrics, str) else _cell(metrics["p99_ms_at_most"])
            held = step["held"] if isinstance(step["held"], str) else ("yes" if step["held"] else "**no**")
            rows = dict(step["kinds"])
            if confirmation := step.get("confirmation"):
                rows["confirm -> paid"] = _confirmation_row(confirmation)
            for kind, row in rows.items():
                failures = ", ".join(f"{k} {v}" for k, v in row["failures"].items()) or "0"
                lines.append(
                    f"| {name} | {sweep} | {_cell(step['level'])}/s | {kind} | {row['ok']}/{row['planned']} | "
                    f"{_cell(row['p50_ms'])} | {_cell(row['p90_ms'])} | {_cell(row['p99_ms'])} | "
                    f"{_cell(row['max_ms'])} | {_cell(row['lag_p99_ms'])} | {failures} | {step['load_average']:.1f} | "
                    f"{_cell(step['cpu_ms_per_answer'])} | {_cell(step.get('machine_busy_share'))} | {server_p99} | "
                    f"{held} |")
    return "\n".join(lines) + "\n"


def plot(figures: dict[str, Any], path: Path) -> None:
    """p99 against offered load, one line per server: polls on the left, payments on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    settings = figures["settings"]
    fig, (polls, payments) = plt.subplots(1, 2, figsize=(12, 4.8))
    for axis, sweep, kinds, target, xlabel in (
        (polls, "polls", ("machine-poll", "status-poll"), settings["poll_p99_target_ms"],
         "offered polls/s (half machines, half status pages)"),
        (payments, "payments", ("payment",), settings["payment_p99_target_ms"], "offered customers/s (scan + pay)"),
    ):
        levels: set[float] = set()
        for name, server in figures["servers"].items():
            # Per load its last try (the one that decided it).
            steps = sorted({s["level"]: s for s in server[sweep]}.values(), key=lambda s: s["level"])
            xs = [s["level"] for s in steps]
            levels.update(xs)
            ys = [max((s["kinds"][k]["p99_ms"] or settings["timeout"] * 1000) for k in kinds if k in s["kinds"])
                  for s in steps]
            line, = axis.plot(xs, ys, marker="o", label=name)
            missed = [(x, y) for x, y, s in zip(xs, ys, steps) if not s["held"]]
            if missed:
                axis.plot(*zip(*missed), linestyle="none", marker="x", markersize=10, color=line.get_color())
        axis.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g} ms")
        axis.set_xscale("log")
        # The offered loads as plain numbers: log-scale minor labels (3×10¹, 4×10¹) overlap.
        axis.set_xticks(sorted(levels), [f"{level:g}" for level in sorted(levels)], fontsize=8)
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_yscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel("p99 latency, ms (from planned send time)")
        axis.set_title(f"{sweep}: p99 against offered load (x: missed)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    machine = figures["machine"]
    fig.suptitle(f"Fleet benchmark {settings['date']}: {settings['workers']} workers each, PostgreSQL, "
                 f"provider {settings['provider_latency'] * 1000:g} ms; nproc {machine['nproc']}, "
                 f"load avg {machine['load_average_at_start'][0]}-{(machine.get('load_average_at_end') or ['?'])[0]}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(figures: dict[str, Any], *, out: Path, with_plot: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet.json").write_text(json.dumps(figures, indent=2) + "\n")
    (out / "fleet.md").write_text(markdown(figures))
    if with_plot:
        plot(figures, out / "fleet.png")
