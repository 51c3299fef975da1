"""Django's application behind a module that opens a database connection at import time.

The mistake config/gunicorn.py's pre_fork hook guards against: with preload_app the import runs in
the master, and without the hook every worker would inherit that one connection.
"""

import os
import sys

from coffee_payment.asgi import application
from django.db import connection

connection.ensure_connection()
print(f"db_at_import: connection opened in pid {os.getpid()}", file=sys.stderr, flush=True)

__all__ = ["application"]
