"""What a service did with what the provider (or a run) found: a line for the logs and the run's
report, and a kind that callers decide on, never a prefix of the line."""

from __future__ import annotations

import enum
from collections import Counter


class Kind(enum.StrEnum):
    CHANGED = "changed"  # recorded: the order, orphan payment or staff refund moved on
    UNCHANGED = "unchanged"  # the provider says what the records already say
    IGNORED = "ignored"  # not applied: another order's, being returned, unknown to the provider
    MOVED_ON = "moved on"  # something else changed the order first; theirs stands
    ERROR = "error"  # a provider or database error: the next run retries


class Outcome(str):
    """A str (the line: "paid", "unchanged: order is paid, payment is succeeded"), so that logs,
    JSON and comparisons see the text, with `kind` and `summary`, the run report's key: outcomes
    that change nothing are counted by their kind, not by each order's details."""

    kind: Kind
    summary: str

    def __new__(cls, line: str, *, kind: Kind, summary: str | None = None) -> Outcome:
        outcome = super().__new__(cls, line)
        outcome.kind, outcome.summary = kind, line if summary is None else summary
        return outcome

    def counted(self) -> Outcome:
        """The run report's key for this outcome."""
        return self if self.summary == self else Outcome(self.summary, kind=self.kind)


def changed(line: str) -> Outcome:
    return Outcome(line, kind=Kind.CHANGED)


def unchanged(detail: str) -> Outcome:
    return Outcome(f"unchanged: {detail}", kind=Kind.UNCHANGED, summary=str(Kind.UNCHANGED))


def ignored(detail: str) -> Outcome:
    return Outcome(f"ignored: {detail}", kind=Kind.IGNORED, summary=str(Kind.IGNORED))


def moved_on(detail: str) -> Outcome:
    return Outcome(f"moved on: {detail}", kind=Kind.MOVED_ON, summary=str(Kind.MOVED_ON))


def error(what: str) -> Outcome:
    return Outcome(f"error: {what}", kind=Kind.ERROR)


def errors(counts: Counter[Outcome]) -> int:
    """How many of a run's outcomes were errors."""
    return sum(count for outcome, count in counts.items() if outcome.kind is Kind.ERROR)
