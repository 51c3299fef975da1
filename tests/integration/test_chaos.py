"""The chaos run, short and seeded, on the PostgreSQL pass: a real Gunicorn on a cluster of its own
(it restarts it), the fake provider, machines and customers under the seed's faults, then the money
ledger (devtools/chaos.py). `make chaos` runs it for minutes. A seed that once found a violation
stays here, with this duration, as a regression test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devtools import postgres
from devtools.chaos import Options, chaos_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.database,
    pytest.mark.timeout(400),
    pytest.mark.skipif(not postgres.is_postgres(os.environ.get("DATABASE_URL", "")),
                       reason="the PostgreSQL pass runs it"),
]

SECONDS, MACHINES, WORKERS = 35.0, 6, 2


@pytest.mark.parametrize("seed", [1])
def test_no_money_is_lost_under_the_seeds_faults(tmp_path: Path, seed: int) -> None:
    report = chaos_run(Options(seed=seed, seconds=SECONDS, machines=MACHINES, workers=WORKERS), logs=tmp_path)
    print(report.text())
    assert report.violations == [], report.text()
    # The run did what it is for: every fault of the schedule injected, drinks made and refunded.
    assert report.injected + report.skipped == report.scheduled, report.text()
    assert report.ledger.orders["successful"] and report.ledger.refunds["succeeded"], report.text()
