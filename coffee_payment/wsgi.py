"""WSGI entry point: only for comparison benchmarks and tools that need WSGI; production is ASGI."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coffee_payment.settings")

application = get_wsgi_application()
