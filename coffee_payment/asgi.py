"""The ASGI application Gunicorn's Uvicorn workers serve (`coffee_payment.asgi:application`)."""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application

from coffee_payment.request_timeout import RequestTimeoutMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coffee_payment.settings")

django_application = get_asgi_application()

# A request not answered within GUNICORN_TIMEOUT seconds gets 504 (408 while its body is still
# arriving); see coffee_payment/request_timeout.py for what cannot be interrupted.
application = RequestTimeoutMiddleware(django_application, timeout=settings.REQUEST_TIMEOUT)
