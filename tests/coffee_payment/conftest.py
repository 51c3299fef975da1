"""The project's ASGI handler (coffee_payment/asgi_handler.py) for in-process tests, and its thread pool."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings

from coffee_payment.asgi_handler import LeanASGIHandler, get_lean_asgi_application
from coffee_payment.asgi_types import ASGIApp
from coffee_payment.request_timeout import RequestTimeoutMiddleware

# The production layer's HTTPS settings (the testing layer leaves them off).
PRODUCTION_HTTPS = {"SECURE_SSL_REDIRECT": True, "SECURE_HSTS_SECONDS": 31536000, "SECURE_HSTS_INCLUDE_SUBDOMAINS": True}


def idle_threads_run(handler: LeanASGIHandler, fn: Callable[[], Any]) -> list[Future[Any]]:
    """Run `fn` in each of the pool's threads, once every request has handed its thread back."""
    deadline = time.monotonic() + 10
    while handler.threads.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handler.threads.busy == 0, "a request's thread was not handed back within 10 s"
    return handler.threads.run_idle(fn)


def close_connections(handler: LeanASGIHandler) -> None:
    """What the pool's threads still hold goes before the test database does."""
    for done in idle_threads_run(handler, connections.close_all):
        done.result(timeout=10)


@pytest.fixture
def lean() -> Iterator[LeanASGIHandler]:
    handler = LeanASGIHandler()
    yield handler
    close_connections(handler)


@pytest.fixture
def application() -> Iterator[ASGIApp]:
    """The application as coffee_payment/asgi.py builds it, with production's HTTPS settings."""
    with override_settings(**PRODUCTION_HTTPS):
        yield RequestTimeoutMiddleware(get_lean_asgi_application(), timeout=settings.REQUEST_TIMEOUT)
