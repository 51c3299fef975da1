"""`make bench-fleet` in miniature: one server, a second per step, a tiny fleet on the suite's database.

Checks that the open-loop generator reaches every route the fleet uses (machine API with tokens,
status polls, scan, payment through the fake provider), that the report holds what the results
doc is made of, and that the server's own /metrics counted every request of a step.
"""

from __future__ import annotations

import json
import os

import pytest

from bench import fleet
from devtools.postgres import is_postgres

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(90),
    # The fleet benchmark runs on PostgreSQL; once per suite run is enough for a smoke test.
    pytest.mark.skipif(not is_postgres(os.environ.get("DATABASE_URL", "")),
                       reason="the fleet benchmark's smoke test runs in the PostgreSQL pass"),
]


def test_fleet_report_structure(tmp_path, migrated_server_database):
    figures = fleet.main(["--servers", "stack", "--database-url", migrated_server_database, "--workers", "1",
                          "--seconds", "1",
                          "--poll-levels", "20", "--payment-levels", "3", "--background-machines", "4",
                          "--lost-notifications", "0.5", "--no-half", "--no-plot", "--out", str(tmp_path)])

    stack = figures["servers"]["stack"]
    # One load each, tried a second time if it missed its target (a busy machine).
    assert [s["level"] for s in stack["polls"]] in ([20], [20, 20])
    assert [s["level"] for s in stack["payments"]] in ([3], [3, 3])
    polls, payments = stack["polls"][0], stack["payments"][0]
    # Every request of the tiny load was answered: each route works with the seeded fleet.
    assert set(polls["kinds"]) == {"machine-poll", "status-poll"}
    assert set(payments["kinds"]) >= {"machine-poll", "scan", "payment", "status-page"}
    # Every customer confirmed at the provider and saw paid, the notification lost or not.
    confirmation = payments["confirmation"]
    assert confirmation["confirmed"] == payments["kinds"]["payment"]["ok"] > 0, confirmation
    assert (confirmation["unconfirmed"], confirmation["failed"]) == (0, 0), confirmation
    # Paid on the page within 5 s of confirming, notification or not: the defaults' recheck + poll
    # interval + provider budget, which test_payment_flow.py derives from those settings.
    assert 0 < confirmation["p50_ms"] <= confirmation["p99_ms"] <= 5000, confirmation
    for step in stack["polls"] + stack["payments"]:
        for kind, row in step["kinds"].items():
            assert row["planned"] > 0 and row["failed"] == 0, (kind, row)
            assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"], (kind, row)
        # The server counted every request the step sent (and perhaps a scrape of its own).
        counted = step["server_metrics"]
        assert counted["histogram"] == "coffee_http_request_duration_seconds"
        assert counted["requests"] >= sum(row["planned"] for row in step["kinds"].values()), (counted, step["kinds"])
        # Beside the server's CPU, the generator's (this process) and the machine's busy share.
        assert step["generator_cpu_ms_per_answer"] > 0 and 0 < step["machine_busy_share"] <= 1.1, step
    assert polls["offered_per_s"]["machine-poll"] == pytest.approx(10, rel=0.05)
    assert payments["kinds"]["payment"]["p50_ms"] >= 300  # the fake provider's default latency
    # Whether a load held depends on the machine; the capacity is the one load offered or none.
    assert stack["capacity"]["polls_per_s"] in (0, 20) and stack["capacity"]["payments_per_s"] in (0, 3)
    written = json.loads((tmp_path / "fleet.json").read_text())
    assert written["machine"]["nproc"] >= 1 and written["machine"]["load_average_at_start"]
    assert {row["target"].split(" ")[0] for row in written["targets"]} >= {"payment", "order-status"}
    if stack["capacity"]["payments_per_s"]:
        # What the machine itself could offer: CPU outside the server per customer, and the bound.
        [payment_target] = [row for row in written["targets"] if row["target"].startswith("payment capacity")]
        assert "a server using none would get at most" in payment_target["detail"]
    report = (tmp_path / "fleet.md").read_text()
    assert "| stack | polls | 20/s | machine-poll |" in report and "## Targets" in report
    assert "| stack | payments | 3/s | confirm -> paid |" in report
    assert {row["target"].split(" ")[0] for row in written["targets"]} >= {"confirm"}
