"""The ASGI application Gunicorn's Uvicorn workers serve (`coffee_payment.asgi:application`)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coffee_payment.settings")

django_application = get_asgi_application()

# Imported after Django is set up: the app's modules read django.conf.settings.
from coffee_payment.lifespan import Lifespan  # noqa: E402
from payments import provider  # noqa: E402

# The provider client is per worker event loop; close it when the worker stops.
application = Lifespan(django_application, on_shutdown=(provider.aclose,))
