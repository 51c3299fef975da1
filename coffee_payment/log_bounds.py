"""Bounded logs: a value that reaches a log line is truncated and its control characters escaped,
and a warning that every request of a flood could write is written at most once an interval.

`BoundedValuesFilter` sits on every handler (coffee_payment/log_config.py), so it bounds what
Django, uvicorn, Gunicorn and this project log alike: a path, a Host header, a notification's
`event`, a provider's error text. A client can make a line longer only by a bounded amount.
"""

from __future__ import annotations

import logging
import numbers
import re
import time
from typing import Any

__all__ = ["BOUNDED", "LOG_VALUE_LIMIT", "BoundedValuesFilter", "RateLimitedWarning", "log_value"]

# Characters of one value in a log line: a path, a header, an id, a provider's error text.
LOG_VALUE_LIMIT = 300
# Characters of a message logged without arguments (a caller-built one): a traceback's text is not
# a message and is never cut.
MESSAGE_LIMIT = 1000
# Everything that starts a new line or moves a terminal: C0 controls, DEL, C1 controls (NEL among
# them) and the Unicode line and paragraph separators (str.splitlines() breaks on all of them);
# and lone surrogates (a JSON body's "\ud800"), which no UTF-8 stream can write.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# The record attribute that says it was bounded (kept out of JSON lines by log_config).
BOUNDED = "bounded_values"


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def log_value(value: object, *, limit: int = LOG_VALUE_LIMIT) -> str:
    """`value` as text for a log line: at most `limit` characters (and a note of how many were cut),
    control characters escaped as `\\xNN`."""
    text = value if isinstance(value, str) else str(value)
    head = text[:limit]
    if _UNSAFE.search(head):
        head = _UNSAFE.sub(_escaped, head)
    if len(text) <= limit and len(head) <= limit:
        return head
    return f"{head[:limit]}...({len(text)} chars)"


class _Bounded:
    """A log argument shown bounded whether as %s or as %r (whose quotes and escapes it keeps)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return log_value(self.value)

    def __repr__(self) -> str:
        return log_value(repr(self.value))


def _bounded(value: Any) -> Any:
    if isinstance(value, str) and len(value) <= LOG_VALUE_LIMIT and not _UNSAFE.search(value):
        return value  # nearly every argument: nothing to do
    if value is None or isinstance(value, numbers.Number):  # for %d and %f
        return value
    return _Bounded(value)


class BoundedValuesFilter(logging.Filter):
    """Bounds every argument of a record (each to LOG_VALUE_LIMIT characters), a message logged
    without arguments (to MESSAGE_LIMIT) and the `request` Django attaches (its repr holds the path
    and query string); once per record, however many handlers it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, BOUNDED, False):
            return True
        setattr(record, BOUNDED, True)
        args = record.args
        if isinstance(args, dict):
            record.args = {key: _bounded(value) for key, value in args.items()}
        elif args:
            record.args = tuple(_bounded(value) for value in args)
        elif isinstance(record.msg, str):
            record.msg = log_value(record.msg.rstrip(), limit=MESSAGE_LIMIT)
        if "request" in record.__dict__:
            record.request = log_value(repr(record.request))
        return True


class RateLimitedWarning:
    """One WARNING line per `seconds` at most for an event a flood repeats (an overloaded worker's
    503s, a failed accept); each line says how many happened since the last one."""

    def __init__(self, logger: logging.Logger, message: str, *, seconds: float) -> None:
        self.logger = logger
        self.message = message
        self.seconds = seconds
        self._last = -float("inf")
        self._since = 0

    def __call__(self, *args: object) -> None:
        self._since += 1
        now = time.monotonic()
        if now - self._last >= self.seconds:
            self.logger.warning(f"{self.message} (%d in the last %.0f s at most)", *args, self._since, self.seconds)
            self._last, self._since = now, 0
