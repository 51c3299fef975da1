"""Bounded logs (coffee_payment/log_bounds.py): every value truncated and escaped on every handler,
once per record; a flood's warning written once an interval with its count."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from coffee_payment import log_bounds
from coffee_payment.log_bounds import LOG_VALUE_LIMIT, MESSAGE_LIMIT, BoundedValuesFilter, RateLimitedWarning, log_value
from coffee_payment.log_config import logging_config

# The longest note log_value adds to a cut value: "...(<characters> chars)".
NOTE = len("...(10000000 chars)")


# No deadline: the suite's two lanes share the CPU, and an example's time says nothing here.
@hypothesis_settings(deadline=None)
@given(st.text(max_size=2000))
def test_a_value_is_one_line_of_bounded_length(text: str) -> None:
    shown = log_value(text)
    assert len(shown) <= LOG_VALUE_LIMIT + NOTE
    assert shown.splitlines() in ([], [shown])
    shown.encode("utf-8")  # no lone surrogate left
    if len(text) <= LOG_VALUE_LIMIT and text.isprintable():
        assert shown == text


@pytest.mark.parametrize(("raw", "shown"), [
    ("GET /x\nINFO forged line", "GET /x\\x0aINFO forged line"),
    ("\r\x1b[31mred\x7f\x85\u2028\ud800", "\\x0d\\x1b[31mred\\x7f\\x85\\u2028\\ud800"),
    ("Капучино 159,00 ₽", "Капучино 159,00 ₽"),
])
def test_control_characters_are_escaped_and_other_text_kept(raw: str, shown: str) -> None:
    assert log_value(raw) == shown


def test_a_long_value_is_cut_saying_how_long_it_was() -> None:
    assert log_value("a" * 1_000_000) == "a" * LOG_VALUE_LIMIT + "...(1000000 chars)"
    assert log_value("\n" * 200) == "\\x0a" * (LOG_VALUE_LIMIT // 4) + "...(200 chars)"


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """The production logging layout (JSON) on one buffer; the settings' own afterwards."""
    from django.conf import settings

    buffer = io.StringIO()
    config = logging_config(log_format="json", level="INFO")
    for handler in config["handlers"].values():
        handler["stream"] = buffer
    logging.config.dictConfig(config)
    try:
        yield buffer
    finally:
        logging.config.dictConfig(settings.LOGGING)


def test_every_argument_of_every_line_is_bounded(lines: io.StringIO) -> None:
    event = "payment.succeeded\n{\"level\": \"CRITICAL\"}" + "x" * 1_000_000
    logging.getLogger("payments.services").warning("notification %s for payment %r: %d kopecks, %.1f s, %s",
                                                   event, "id\r\n", 15900, 2.5, ValueError("v" * 5000))
    logging.getLogger("django.request").warning("Not Found: %s", "/x" * 10_000, extra={"request": "/" * 10_000})
    logging.getLogger("coffee_payment").warning("built by the caller " + "y\n" * 5000)
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert len(records) == 3
    first, second, third = records
    assert first["message"].startswith("notification payment.succeeded\\x0a{\"level\": \"CRITICAL\"}xxx")
    assert "for payment 'id\\r\\n': 15900 kopecks, 2.5 s, vvv" in first["message"]
    # Three values at most LOG_VALUE_LIMIT characters and a note each, and the format's own text.
    assert len(first["message"]) <= len("notification  for payment : 15900 kopecks, 2.5 s, ") + 3 * (LOG_VALUE_LIMIT + NOTE)
    assert len(second["message"]) <= len("Not Found: ") + LOG_VALUE_LIMIT + NOTE
    assert len(second["request"]) <= LOG_VALUE_LIMIT + NOTE
    assert len(third["message"]) <= MESSAGE_LIMIT + NOTE and "\n" not in third["message"]
    assert "bounded_values" not in first


def test_a_record_is_bounded_once_whatever_the_number_of_handlers() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "%s", ("\n" * 1000,), None)
    bounded = BoundedValuesFilter()
    assert bounded.filter(record) and bounded.filter(record)
    assert record.getMessage() == "\\x0a" * (LOG_VALUE_LIMIT // 4) + "...(1000 chars)"


def test_a_flood_warning_is_written_once_an_interval_with_its_count(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    monkeypatch.setattr(log_bounds.time, "monotonic", lambda: now[0])
    warn = RateLimitedWarning(logging.getLogger("coffee_payment.test"), "refused %s", seconds=10)
    with caplog.at_level(logging.WARNING, logger="coffee_payment.test"):
        for _ in range(1000):
            warn("a connection")
        now[0] += 10
        warn("a connection")
    assert [record.getMessage() for record in caplog.records] == [
        "refused a connection (1 in the last 10 s at most)",
        "refused a connection (1000 in the last 10 s at most)",
    ]
