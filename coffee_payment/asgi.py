"""The ASGI application Gunicorn's Uvicorn workers serve (`coffee_payment.asgi:application`)."""

import os

from django.conf import settings

from coffee_payment.asgi_handler import get_lean_asgi_application
from coffee_payment.body_limit import BodyLimitMiddleware
from coffee_payment.metrics import GaugeSampler, MetricsPort, RequestMetricsMiddleware
from coffee_payment.request_id import RequestIdMiddleware
from coffee_payment.request_timeout import RequestTimeoutMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coffee_payment.settings")

# Django's ASGI handler, with the lean path for settings.LEAN_PATHS (coffee_payment/asgi_handler.py).
django_application = get_lean_asgi_application()

# Imported after Django is set up: the app's modules read django.conf.settings.
from coffee_payment.lifespan import Lifespan  # noqa: E402
from payments import provider  # noqa: E402
from payments.scrape_metrics import database_metrics  # noqa: E402
from payments.vend_window import MakeWindowChecker  # noqa: E402

# A request not answered within GUNICORN_TIMEOUT seconds gets 504 (408 while its body is still
# arriving); see coffee_payment/request_timeout.py for what cannot be interrupted. Outside it,
# the lifespan handler: the provider client is per worker event loop, closed when the worker stops.
# Outside the timeout, the body limit (GUNICORN_MAX_BODY_BYTES): a body over it gets 413 before
# it is read (coffee_payment/body_limit.py).
# Outside those, the metrics port's split: its requests get /metrics and never the application.
# Outside that, the request metrics (coffee_payment/metrics.py), which count the 413s and 504s
# too, and outermost the request's X-Request-ID (coffee_payment/request_id.py), so every log line
# of the request carries it.
# Beside the requests, from lifespan startup to shutdown: the gauges' sampler, and the vend window
# check (payments/vend_window.py), which every worker runs so that no deployment needs a process of
# its own for it; it stops before the provider client it uses is closed.
gauge_sampler = GaugeSampler()
make_window_checker = MakeWindowChecker()
application = Lifespan(
    RequestIdMiddleware(
        RequestMetricsMiddleware(
            MetricsPort(
                BodyLimitMiddleware(
                    RequestTimeoutMiddleware(django_application, timeout=settings.REQUEST_TIMEOUT),
                    limit=settings.REQUEST_BODY_LIMIT,
                ),
                # The payments app's counts from the database come with every scrape.
                port=settings.METRICS_PORT, scrape_reads=(database_metrics,),
            ),
        ),
    ),
    on_startup=(gauge_sampler.start, make_window_checker.start),
    on_shutdown=(make_window_checker.stop, provider.aclose, gauge_sampler.stop),
)
