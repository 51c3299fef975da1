from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from payments.health import database_check


async def health(request: HttpRequest) -> JsonResponse:
    """Liveness: the worker's event loop answers. Touches no database."""
    return JsonResponse({"status": "ok"})


async def ready(request: HttpRequest) -> JsonResponse:
    """Readiness: the database answers within settings.READINESS_DATABASE_TIMEOUT."""
    failure = await database_check(timeout=settings.READINESS_DATABASE_TIMEOUT)
    if failure is not None:
        return JsonResponse({"status": "unavailable", "checks": {"database": failure}}, status=503)
    return JsonResponse({"status": "ready"})
