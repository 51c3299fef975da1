"""One logging layout for Django and Gunicorn: JSON lines in production, text at a terminal."""

from __future__ import annotations

import logging
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS

from coffee_payment.log_bounds import BOUNDED, BoundedValuesFilter
from coffee_payment.request_id import RequestIdFilter

# python-json-logger turns these LogRecord attributes into keys of each JSON line.
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


class ClientErrorFilter(logging.Filter):
    """A client's mistake as one WARNING line: the message, no traceback.

    Django logs every SuspiciousOperation (a wrong Host header: `django.security.DisallowedHost`,
    too many fields, a malformed multipart body) at ERROR with the exception's traceback; those are
    the client's errors, not ours, and a traceback would only bury real errors. On the handler,
    because a logger's own filters do not see records propagated from its children; so the
    handler also applies the configured level to the demoted record.
    """

    def __init__(self, *, level: str) -> None:
        super().__init__()
        self.level = logging.getLevelName(level)

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return record.levelno >= self.level


class LoggedFailureFilter(logging.Filter):
    """Drops `django.request`'s generic line ("Service Unavailable: /path") for a response whose
    failure the code that answered it has logged already, and said so with `request.failure_logged`
    (payments/middleware.py): one ERROR line per failure, the one that says why."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(getattr(record, "request", None), "failure_logged", False)


def logging_config(*, log_format: str, level: str) -> dict[str, Any]:
    """A logging.config.dictConfig dict: errors to stderr, access lines to stdout."""
    if log_format == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            # uvicorn repeats each message with terminal colour codes as `color_message`.
            "reserved_attrs": [*RESERVED_ATTRS, "color_message", BOUNDED],
        }
    else:
        formatter = {"format": TEXT_FORMAT}

    def handler(stream: str) -> dict[str, Any]:
        # request_id: the X-Request-ID of the request being served, a key of every JSON line
        # written while it runs (coffee_payment/request_id.py). bounded: what a client sent is
        # truncated and escaped on every line (coffee_payment/log_bounds.py).
        return {
            "class": "logging.StreamHandler",
            "formatter": "default",
            "stream": f"ext://sys.{stream}",
            "filters": ["request_id", "bounded"],
        }

    client_errors = {**handler("stderr"), "filters": ["request_id", "client_error", "bounded"]}

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {
            "client_error": {"()": ClientErrorFilter, "level": level},
            "request_id": {"()": RequestIdFilter},
            "logged_failure": {"()": LoggedFailureFilter},
            "bounded": {"()": BoundedValuesFilter},
        },
        "handlers": {"stderr": handler("stderr"), "stdout": handler("stdout"), "client_errors": client_errors},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # Gunicorn's master and workers; uvicorn-worker points uvicorn's loggers at these.
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
            "uvicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "uvicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
            "django": {"level": level, "handlers": ["stderr"], "propagate": False},
            "django.request": {"level": level, "handlers": ["stderr"], "filters": ["logged_failure"],
                               "propagate": False},
            # SuspiciousOperation, a wrong Host header (django.security.DisallowedHost) included: the
            # client's error, one WARNING line without traceback. (DisallowedHost once had no
            # handler at all, so Python's last-resort handler printed it as plain text, traceback
            # and all, outside the JSON lines.)
            "django.security": {"level": level, "handlers": ["client_errors"], "propagate": False},
        },
    }
