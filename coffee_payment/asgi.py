"""The ASGI application Gunicorn's Uvicorn workers serve (`coffee_payment.asgi:application`)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coffee_payment.settings")

application = get_asgi_application()
