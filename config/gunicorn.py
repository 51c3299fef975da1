"""Gunicorn configuration: `gunicorn -c config/gunicorn.py`.

Values come from coffee_payment.conf (config/settings.toml layers + GUNICORN_* variables),
validated before anything binds. GUNICORN_CMD_ARGS and command-line flags still win over this
file, as Gunicorn documents.
"""

import sys
from pathlib import Path

from coffee_payment.conf import ConfigError, process_settings
from coffee_payment.log_config import logging_config

try:
    settings = process_settings()
except ConfigError as exc:
    # One line and a non-zero status, before any socket is bound.
    sys.exit(f"configuration error: {exc}")

server = settings.server

# Server socket
#
#   bind - GUNICORN_HOST:GUNICORN_PORT (0.0.0.0:8000 by default).
bind = [server.bind]

# Worker processes
#
#   workers      - GUNICORN_WORKERS Uvicorn worker processes, each one event loop.
#   worker_class - uvicorn-worker's class; `uvicorn.workers` is deprecated upstream.
#   timeout      - GUNICORN_TIMEOUT: a silent worker is killed and replaced after this long.
#   graceful_timeout - how long SIGTERM waits for in-flight requests before killing workers.
#   keepalive    - seconds an idle keep-alive connection stays open.
#   max_requests / max_requests_jitter - recycle a worker after about this many requests.
wsgi_app = "coffee_payment.asgi:application"
workers = server.workers
worker_class = "uvicorn_worker.UvicornWorker"
timeout = server.timeout
graceful_timeout = server.graceful_timeout
keepalive = server.keepalive
max_requests = server.max_requests
max_requests_jitter = server.max_requests_jitter

# Server mechanics
#
#   control_socket_disable - Gunicorn 27 would create $HOME/.gunicorn/gunicorn.ctl, which fails
#   for a non-root user with a read-only root filesystem; nothing here uses gunicornc.
control_socket_disable = True
#
#   worker_tmp_dir - each worker's heartbeat file. In memory (/dev/shm) where there is one:
#   container runtimes mount it writable even over a read-only root filesystem, and a heartbeat
#   on a disk-backed /tmp can stall workers. Elsewhere Python's temporary directory.
worker_tmp_dir = "/dev/shm" if Path("/dev/shm").is_dir() else None

# Logging
#
#   Everything to stdout/stderr; JSON lines in production, text in development and tests.
accesslog = "-"
errorlog = "-"
loglevel = settings.log_level.lower()
logconfig_dict = logging_config(log_format=settings.log_format, level=settings.log_level)
