"""One logging layout for Django and Gunicorn: JSON lines in production, text at a terminal."""

from __future__ import annotations

from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS

# python-json-logger turns these LogRecord attributes into keys of each JSON line.
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def logging_config(*, log_format: str, level: str) -> dict[str, Any]:
    """A logging.config.dictConfig dict: errors to stderr, access lines to stdout."""
    if log_format == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            # uvicorn repeats each message with terminal colour codes as `color_message`.
            "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
        }
    else:
        formatter = {"format": TEXT_FORMAT}

    def handler(stream: str) -> dict[str, str]:
        return {"class": "logging.StreamHandler", "formatter": "default", "stream": f"ext://sys.{stream}"}

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": handler("stderr"), "stdout": handler("stdout")},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # Gunicorn's master and workers; uvicorn-worker points uvicorn's loggers at these.
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
            "uvicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "uvicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
            "django": {"level": level, "handlers": ["stderr"], "propagate": False},
            # A wrong Host header is the client's error; the access line already shows the 400.
            "django.security.DisallowedHost": {"handlers": [], "propagate": False},
        },
    }
