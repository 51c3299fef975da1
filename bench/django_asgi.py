"""The project under Django's own ASGI handler: the outside references of `make bench-fleet`.

`get_asgi_application()` as `django-admin startproject` writes it, with none of
coffee_payment/asgi.py's layers (lean path, request timeout, body limit, lifespan): what stock
Gunicorn + `uvicorn_worker.UvicornWorker`, or Granian, serve when handed a Django project as is.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coffee_payment.settings")

application = get_asgi_application()
