from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings
from django.test import override_settings

from coffee_payment.asgi_types import ASGIApp
from coffee_payment.lean import get_lean_asgi_application
from coffee_payment.request_timeout import RequestTimeoutMiddleware

# The production layer's HTTPS settings (the testing layer leaves them off).
PRODUCTION_HTTPS = {"SECURE_SSL_REDIRECT": True, "SECURE_HSTS_SECONDS": 31536000, "SECURE_HSTS_INCLUDE_SUBDOMAINS": True}


@pytest.fixture
def application() -> Iterator[ASGIApp]:
    """The application as coffee_payment/asgi.py builds it, with production's HTTPS settings."""
    with override_settings(**PRODUCTION_HTTPS):
        yield RequestTimeoutMiddleware(get_lean_asgi_application(), timeout=settings.REQUEST_TIMEOUT)
