"""503, not 500, when the database cannot answer a view."""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.deprecation import MiddlewareMixin
from django.utils.translation import gettext as _

from payments.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

# Seconds a client should wait: about one readiness probe, after which a pod without its database
# has left the Service (deploy/).
RETRY_AFTER_SECONDS = 5


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """A view's OperationalError or InterfaceError (the database is down, restarting, unreachable,
    or SQLite stayed locked past its busy timeout) answers 503 with Retry-After: a client may try
    again, and `/ready` answers 503 meanwhile. A browser's page request (Accept names text/html)
    gets the error page, anything else JSON. Other database errors are bugs and stay 500s.

    Django calls `process_exception` in the request's thread; on both middleware chains.
    """

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        log.error("the database could not answer %s %s: %s", request.method, request.path,
                  str(exception).strip() or type(exception).__name__)
        # Logged: Django's own "Service Unavailable" line would be a second one (coffee_payment/log_config.py).
        request.failure_logged = True  # type: ignore[attr-defined]
        error = DatabaseUnavailable(_("Payments cannot be taken for a moment. Please try again in a minute."))
        response: HttpResponse
        if "text/html" in request.headers.get("Accept", ""):
            response = render(request, "payments/error.html", {"error": error}, status=error.status)
        else:
            response = JsonResponse({"error": error.message}, status=error.status)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
