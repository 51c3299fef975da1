"""Every setting, declared once: its variable, dotted key, kind (type and range or choices), default,
whether it is secret, and one line of meaning. The loader's validators, the typed Settings, the
report of show_config and the docs' variables tables (tests/test_docs.py) all follow from these rows;
config/settings.toml holds only what a layer sets otherwise."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coffee_payment.conf_values import (
    API_URL, BOOLEAN, DATABASE_URL, DATABASE_WAIT_TIMEOUT, DIRECTORY, HOSTS, NETWORKS, PROVIDER_SECRETS, SITE_URL,
    TEXT, Kind, mask_database_url, mask_url, one_of, seconds, settings_types, whole_number,
)

REQUIRED = object()  # a default: every layer must set the value (a layer's TOML or its variable)
DERIVED = object()  # a default: the loader derives the value from another, as `unset_source` says


@dataclass(frozen=True)
class Setting:
    variable: str | None  # None: settings.toml only
    key: str
    kind: Kind
    # A value, REQUIRED, DERIVED, or a function of nothing that gives a value at each start.
    default: Any
    meaning: str
    # True: never shown; a function: shown through it (a URL's password masked).
    secret: bool | Callable[[str], str] = False
    # The production layer has no default for it: its variable must be set there.
    production_required: bool = False
    unset_source: str = "built-in"  # show_config's source when nothing set it


def generated_key(*_: Any) -> str:
    # Outside production: nothing signed there needs to outlive the server.
    return secrets.token_urlsafe(50)


LAYER_VARIABLE = "DJANGO_ENV"
LAYERS = ("development", "production", "testing")
# Fail safe: a pod that forgot DJANGO_ENV gets the strict layer, never DEBUG.
LAYER = Setting(LAYER_VARIABLE, "layer", one_of(*LAYERS, normal=str), "production", "The settings layer")
S = Setting
DECLARED = (
    S("DJANGO_SECRET_KEY", "secret_key", TEXT, generated_key, "Django's signing key", secret=True,
      production_required=True, unset_source="generated at start"),
    S("DJANGO_ALLOWED_HOSTS", "allowed_hosts", HOSTS, (), "Host names the site answers to",
      production_required=True),
    S("DATABASE_URL", "database_url", DATABASE_URL, REQUIRED, "The database", secret=mask_database_url),
    # Not the request's Host: every attempt under an order's Idempotence-Key sends the same body.
    S("DJANGO_PUBLIC_BASE_URL", "public_base_url", SITE_URL, "http://localhost:8000",
      "Where customers reach the site: the provider's return URL is built on it", production_required=True),
    S("DJANGO_DEBUG", "debug", BOOLEAN, False, "Django's DEBUG; refused in production"),
    S("DATABASE_ALLOW_SQLITE", "database_allow_sqlite", BOOLEAN, False,
      "Production accepts a SQLite DATABASE_URL (one replica only)"),
    S("DJANGO_SECURE_SSL_REDIRECT", "security.ssl_redirect", BOOLEAN, False, "Redirect plain HTTP to HTTPS"),
    S("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", "security.hsts_include_subdomains", BOOLEAN, True,
      "HSTS includeSubDomains"),
    S("DJANGO_SECURE_HSTS_PRELOAD", "security.hsts_preload", BOOLEAN, False, "HSTS preload: the domain owner's call"),
    S("DJANGO_LOG_LEVEL", "log_level", one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", normal=str.upper),
      "INFO", "The root log level"),
    S("DJANGO_LOG_FORMAT", "log_format", one_of("json", "text", normal=str.lower), "json",
      "json: one object per line; text: for people at a terminal"),
    S(None, "time_zone", TEXT, "UTC", "Django's TIME_ZONE"),
    S("GUNICORN_HOST", "gunicorn.host", TEXT, "0.0.0.0", "Address to bind"),
    # In memory, like the heartbeat files: runtimes mount /dev/shm writable over a read-only root.
    S("GUNICORN_METRICS_DIR", "gunicorn.metrics_dir", DIRECTORY, "/dev/shm/coffee-payment-metrics",
      "prometheus_client's multiprocess directory, emptied at every start"),
    # Empty: no peer is a trusted proxy, so no client chooses its own address or scheme.
    S("GUNICORN_FORWARDED_ALLOW_IPS", "gunicorn.forwarded_allow_ips", NETWORKS, (),
      "Peers whose X-Forwarded-For and X-Forwarded-Proto count"),
    S("PAYMENT_PROVIDER_URL", "provider.url", API_URL, "https://api.yookassa.ru/v3", "The provider's API",
      secret=mask_url),
    S("PAYMENT_PROVIDER_SECRETS", "provider.secrets", PROVIDER_SECRETS, {}, "shop_id:secret,...; environment only",
      secret=True, unset_source="not set"),
    # Empty: notifications from any address (their bodies are never trusted anyway).
    S("PAYMENT_PROVIDER_NOTIFICATION_ADDRESSES", "provider.notification_addresses", NETWORKS, (),
      "Senders whose notifications are read"),
    # Whole numbers. workers: 64 is far past what one pod should run; timeouts: an hour. Hostile clients
    # (docs/architecture.md, "Request limits"): headers of what browsers send with cookies up to 1 MiB;
    # a body of 1 KiB (a webhook is a few hundred bytes) to 64 MiB (in memory, never spooled).
    S("GUNICORN_WORKERS", "gunicorn.workers", whole_number(1, 64), 4, "Uvicorn worker processes"),
    S("GUNICORN_PORT", "gunicorn.port", whole_number(1, 65535), 8000, "TCP port to bind"),
    S("GUNICORN_TIMEOUT", "gunicorn.timeout", whole_number(1, 3600), 30, "Seconds a request may take (then 504)"),
    S("GUNICORN_GRACEFUL_TIMEOUT", "gunicorn.graceful_timeout", whole_number(1, 3600), DERIVED,
      "Seconds a stop waits for requests in flight", unset_source="= gunicorn.timeout"),
    S("GUNICORN_MAX_REQUESTS", "gunicorn.max_requests", whole_number(0, 10_000_000), 0,
      "Restart a worker after this many requests; 0 never"),
    S("GUNICORN_MAX_REQUESTS_JITTER", "gunicorn.max_requests_jitter", whole_number(0, 10_000_000), 0,
      "Random 0..N added to each worker's restart threshold"),
    S("GUNICORN_KEEPALIVE", "gunicorn.keepalive", whole_number(1, 300), 5, "Seconds an idle connection stays open"),
    # nginx's large_client_header_buffers 4 x 8k; client_max_body_size 1m.
    S("GUNICORN_MAX_HEADER_BYTES", "gunicorn.max_header_bytes", whole_number(4096, 1_048_576), 32768,
      "Bytes of request line and headers (then 431)"),
    S("GUNICORN_HEADER_TIMEOUT", "gunicorn.header_timeout", whole_number(1, 300), 10,
      "Seconds to complete a request's headers (then 408)"),
    S("GUNICORN_MAX_BODY_BYTES", "gunicorn.max_body_bytes", whole_number(1024, 67_108_864), 1048576,
      "Bytes of a request body (then 413)"),
    # Never `port`: no Service routes it, the NetworkPolicy admits only the scraper (docs/operations.md).
    S("GUNICORN_METRICS_PORT", "gunicorn.metrics_port", whole_number(0, 65535), 9464,
      "The port where /metrics alone answers; 0 none"),
    # uvicorn counts the request's own connection, so 10 serves nine at once; 100000 is past any file limit.
    S("GUNICORN_WORKER_CONNECTIONS", "gunicorn.worker_connections", whole_number(10, 100_000), 1000,
      "Connections or requests per worker beyond which a request gets 503"),
    # Retries repeat a provider call with the same Idempotence-Key: more only lengthen the customer's wait.
    S("PAYMENT_PROVIDER_CONNECT_TIMEOUT", "provider.connect_timeout", seconds(0.1, 30), 3.0,
      "Seconds to wait for a connection to the provider"),
    S("PAYMENT_PROVIDER_READ_TIMEOUT", "provider.read_timeout", seconds(0.1, 60), 3.0,
      "Seconds to wait for each answer from the provider"),
    S("PAYMENT_PROVIDER_RETRIES", "provider.retries", whole_number(0, 5), 2, "Extra attempts of a provider call"),
    # Forged notifications: what they may cost in provider reads.
    S("PAYMENT_PROVIDER_REREAD_SECONDS", "provider.reread_seconds", whole_number(1, 300), 5,
      "A notification's payment is not read again for the same claim within this time"),
    S("PAYMENT_PROVIDER_UNKNOWN_READS_PER_MINUTE", "provider.unknown_reads_per_minute", whole_number(1, 10_000), 60,
      "Per worker: reads a minute of ids no order holds"),
    S("ORDER_EXPIRY_MINUTES", "orders.expiry_minutes", whole_number(1, 1440), 15, "Minutes an order can be paid"),
    # Per worker process.
    S("DATABASE_POOL_MAX_SIZE", "database_pool_max_size", whole_number(1, 100), 10,
      "PostgreSQL: connections each worker keeps in its pool, at most"),
    S("DATABASE_WAIT_TIMEOUT", "database_wait_timeout", seconds(0.5, 60), DERIVED,
      "Seconds a request waits for the database before its 503",
      unset_source=f"= min({DATABASE_WAIT_TIMEOUT:g}, gunicorn.timeout / 2)"),
    S("ORDER_RECONCILE_AFTER_MINUTES", "orders.reconcile_after_minutes", whole_number(1, 1440), 10,
      "reconcile_payments re-reads an outcome waited for this long"),
    # The provider keeps a held amount 7 days at most (YooKassa), so it is released well before.
    S("ORDER_HOLD_MAX_MINUTES", "orders.hold_max_minutes", whole_number(1, 8640), 60,
      "Two-stage payments: a hold whose drink is not made in this time is released"),
    S("ORDER_RETENTION_DAYS", "orders.retention_days", whole_number(1, 3650), 30,
      "Orders that never took money are deleted this long after they expired"),
    # The status poll's own provider reads (docs/payments.md, "Money flows").
    S("ORDER_PROVIDER_RECHECK_SECONDS", "orders.provider_recheck_seconds", seconds(1, 300), 2.0,
      "A pending order's payment is re-read at most once per this"),
    S("ORDER_STATUS_PROVIDER_BUDGET_SECONDS", "orders.status_provider_budget_seconds", seconds(0.1, 10), 1.0,
      "Seconds that re-read may keep a poll waiting"),
    S("ORDER_RECONCILE_LIST_HOURS", "orders.reconcile_list_hours", whole_number(1, 720), 24,
      "reconcile_payments lists the provider's payments of this many hours"),
    # Long enough for a machine's poll to see the payment, at most an hour.
    S("ORDER_MAKE_WINDOW_SECONDS", "orders.make_window_seconds", whole_number(5, 3600), 120,
      "A paid order not started this long after its payment gets its money back"),
    # A drink takes minutes, so a started one is overdue after at least one, at most a day.
    S("ORDER_MAKE_TIMEOUT_SECONDS", "orders.make_timeout_seconds", whole_number(60, 86400), 600,
      "A started order not reported this long is handed to the staff"),
    # Silent for 10 s is noise, for a day it is long gone.
    S("DEVICE_OFFLINE_AFTER_SECONDS", "devices.offline_after_seconds", whole_number(10, 86400), 120,
      "A machine silent this long takes no orders"),
    S("ORDER_CONTACT_RETENTION_DAYS", "orders.contact_retention_days", whole_number(1, 3650), 30,
      "A customer's receipt contact is erased this many days after the order"),
    # Two years is the longest browsers' preload lists ask for.
    S("DJANGO_SECURE_HSTS_SECONDS", "security.hsts_seconds", whole_number(0, 63_072_000), 0,
      "HSTS max-age; 0 sends none"),
    S("DJANGO_ADMIN_LOGIN_FAILURE_LIMIT", "security.admin_login_failure_limit", whole_number(1, 100), 5,
      "Failed admin logins from one address before its lockout"),
    S("DJANGO_ADMIN_LOCKOUT_MINUTES", "security.admin_lockout_minutes", whole_number(1, 10080), 15,
      "Minutes a locked-out address waits"),
)
BY_KEY = {setting.key: setting for setting in DECLARED}
# Every variable the loader reads, mapped to its dotted settings key.
VARIABLES: dict[str, str] = {s.variable: s.key for s in DECLARED if s.variable}
SETTINGS_TYPES = settings_types(DECLARED)
Settings = SETTINGS_TYPES[None]
