"""Gunicorn configuration: `gunicorn -c config/gunicorn.py`.

Values come from coffee_payment.conf (config/settings.toml layers + GUNICORN_* variables),
validated before anything binds. GUNICORN_CMD_ARGS and command-line flags still win over this
file, as Gunicorn documents.
"""

import gc
import os
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

# Metrics
#
#   GUNICORN_METRICS_DIR becomes PROMETHEUS_MULTIPROC_DIR, the variable prometheus_client reads
#   when it is first imported to choose its multiprocess mode: so before anything imports it
#   (coffee_payment.workers, the preloaded application) and before the workers fork, who inherit
#   it. Each worker writes its metrics there; /metrics adds them up (coffee_payment/metrics.py).
os.environ["PROMETHEUS_MULTIPROC_DIR"] = server.metrics_dir
try:
    Path(server.metrics_dir).mkdir(parents=True, exist_ok=True)
except OSError as exc:
    sys.exit(f"configuration error: GUNICORN_METRICS_DIR={server.metrics_dir!r} cannot be created: {exc.strerror}")

from coffee_payment.workers import KILL_MARGIN, master_signals_record  # noqa: E402  (after PROMETHEUS_MULTIPROC_DIR)
from prometheus_client import multiprocess  # noqa: E402

# Server socket
#
#   bind - GUNICORN_HOST:GUNICORN_PORT (0.0.0.0:8000 by default), and GUNICORN_METRICS_PORT (9464),
#          where /metrics alone is answered (coffee_payment/metrics.py): every worker serves both.
#   forwarded_allow_ips - GUNICORN_FORWARDED_ALLOW_IPS: only a peer in these addresses and networks
#          sets the client's address and scheme with X-Forwarded-For and X-Forwarded-Proto
#          (uvicorn's proxy headers handling in each worker). Empty by default: no proxy is trusted.
bind = [server.bind, *([server.bind_port(server.metrics_port)] if server.metrics_port else [])]
forwarded_allow_ips = ",".join(server.forwarded_allow_ips)

# Worker processes
#
#   workers      - GUNICORN_WORKERS Uvicorn worker processes, each one event loop.
#   worker_class - a uvicorn_worker.UvicornWorker that drains on every stop: SIGTERM, SIGINT
#                  (to the master alone or to the group) and max_requests recycling. It stops
#                  accepting at once, answers what it accepted, then exits (docs/architecture.md).
#   timeout      - GUNICORN_TIMEOUT: a silent worker is killed and replaced after this long.
#                  The same value is the request timeout (504) in coffee_payment/asgi.py.
#   graceful_timeout - GUNICORN_GRACEFUL_TIMEOUT + KILL_MARGIN: a worker waits for in-flight
#                  requests GUNICORN_GRACEFUL_TIMEOUT seconds, then cancels and logs the rest; the
#                  master SIGKILLs a worker still alive KILL_MARGIN (2) seconds later.
#   keepalive    - seconds an idle keep-alive connection stays open.
#   worker_connections - GUNICORN_WORKER_CONNECTIONS, the worker's uvicorn limit_concurrency: a
#                  request that arrives while the worker has this many connections open or
#                  requests in flight is answered 503.
#   max_requests / max_requests_jitter - recycle a worker after about this many requests.
wsgi_app = "coffee_payment.asgi:application"
workers = server.workers
worker_class = "coffee_payment.workers.DrainingUvicornWorker"
timeout = server.timeout
graceful_timeout = server.graceful_timeout + KILL_MARGIN
keepalive = server.keepalive
worker_connections = server.worker_connections
max_requests = server.max_requests
max_requests_jitter = server.max_requests_jitter

# Server mechanics
#
#   preload_app - import the application (Django) once, in the master, before forking: a worker
#   then boots in about 0.04 s instead of 0.3 s, which is what a recycle costs, and shares the
#   imported code (PSS 24 instead of 38 MiB per worker; figures in docs/benchmarks.md). Code changes
#   need a restart, not a HUP. Nothing may open a socket at import time (see pre_fork).
#   control_socket_disable - Gunicorn 27 would create $HOME/.gunicorn/gunicorn.ctl, which fails
#   for a non-root user with a read-only root filesystem; nothing here uses gunicornc.
preload_app = True
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

# Server hooks
#
#   on_starting - in the master, once (not on HUP): empty the metrics directory of the files a
#   previous run left (a container restarted in the same pod keeps its emptyDir); their counters
#   would be added to this run's.
#
#   pre_fork - in the master, before each worker is forked. With preload_app the application was
#   imported here: a database connection opened at import time would be one socket shared by
#   every worker. Close it, so each worker opens its own. Then freeze the master's objects
#   (gc.freeze, as Python's gc documentation advises right before fork): a worker's full
#   collections skip the ~80,000 objects it inherited, which paused it for 85-105 ms each (a
#   poll's whole latency budget is 50 ms) and wrote to every inherited page.
#
#   when_ready - in the master, once it listens: Gunicorn stops its workers with SIGQUIT for a
#   SIGINT as for a SIGQUIT; note which one the master got, so the workers' drain lines name it.
#
#   child_exit - in the master, after a worker has exited (a stop, a recycle, a crash): remove its
#   live gauges' files, as prometheus_client documents, so its in-flight requests and pool
#   connections stop counting. Its counters and histograms stay: they are the pod's totals.


def on_starting(server):
    for stale in Path(settings.server.metrics_dir).glob("*.db"):
        stale.unlink(missing_ok=True)


def when_ready(server):
    master_signals_record(server)


def pre_fork(server, worker):
    from django.apps import apps

    if apps.ready:  # Django was set up in the master (preload_app serving the Django application)
        from django.db import connections

        connections.close_all()
    gc.freeze()


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
