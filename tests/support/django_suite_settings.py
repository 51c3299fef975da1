"""Settings for Django's own tests against the project's handler (tests/support/django_suite.py).

Django's test settings (its tests/test_sqlite.py, importable in that child process only) plus what
coffee_payment.asgi_handler needs: every path a lean path, so Django's tests go through the lean chain.
"""

from test_sqlite import *  # noqa: F403

LEAN_PATHS = ("/",)
# What runtests.py's MIDDLEWARE (sessions, common, CSRF, auth, messages) shares with the project's
# LEAN_MIDDLEWARE: the stock middleware whose hooks run on the event loop.
LEAN_MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
