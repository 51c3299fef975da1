"""A service's outcome is its line and its kind: callers and the run's report decide on the kind."""

from __future__ import annotations

from collections import Counter

from payments.outcomes import Kind, Outcome, changed, error, errors, ignored, moved_on, unchanged


def test_an_outcome_reads_as_its_line_and_is_decided_on_by_its_kind() -> None:
    paid = changed("paid")
    assert paid == "paid" and paid.kind is Kind.CHANGED
    same = unchanged("order is paid, payment is succeeded")
    assert same == "unchanged: order is paid, payment is succeeded" and same.kind is Kind.UNCHANGED
    # A line is never parsed: a change whose text starts like another kind stays a change.
    assert changed("unchanged-looking text").kind is Kind.CHANGED
    assert Outcome("error budget spent", kind=Kind.CHANGED).kind is Kind.CHANGED


def test_the_run_report_counts_outcomes_that_change_nothing_by_kind_and_errors_by_kind() -> None:
    report: Counter[Outcome] = Counter()
    for outcome in (unchanged("order is paid, payment is succeeded"), unchanged("order is held, payment is pending"),
                    ignored("payment belongs to another order"), moved_on("now paid"), changed("paid"),
                    changed("paid"), error("ProviderUnavailable"), changed("error budget spent")):
        report[outcome.counted()] += 1
    assert report == Counter({"unchanged": 2, "ignored": 1, "moved on": 1, "paid": 2, "error: ProviderUnavailable": 1,
                              "error budget spent": 1})
    assert errors(report) == 1
    assert errors(Counter([error("x"), changed("error")])) == 1
