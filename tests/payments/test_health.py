"""Health endpoints in-process (R6); Host handling is tested on a real server in tests/integration."""

from __future__ import annotations

import pytest
from django.test import AsyncClient

pytestmark = pytest.mark.django_db


async def test_r6_3_health_is_ok() -> None:
    response = await AsyncClient().get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_r6_2_ready_checks_the_database() -> None:
    response = await AsyncClient().get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}
