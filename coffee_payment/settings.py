"""Django settings, assigned by name from the one validated settings object (coffee_payment.conf)."""

from __future__ import annotations

import datetime
import re

from coffee_payment.conf import BASE_DIR, settings as conf
from coffee_payment.conf_values import PROVIDER_DEADLINE_MARGIN, PROVIDER_RETRY_BACKOFF
from coffee_payment.log_config import logging_config

# GENERAL
# ------------------------------------------------------------------------------
DEBUG = conf.debug
SECRET_KEY = conf.secret_key
ALLOWED_HOSTS = list(conf.allowed_hosts)
TIME_ZONE = conf.time_zone
USE_TZ = True
LANGUAGE_CODE = "en-us"
USE_I18N = True
# The customer pages' languages, chosen per request from Accept-Language (LocaleMiddleware); the
# catalogues are payments/locale/<lang>/LC_MESSAGES (committed compiled: see `make messages`).
LANGUAGES = [("ru", "Русский"), ("en", "English")]
# The admin's date formats: times with their zone (coffee_payment/formats).
FORMAT_MODULE_PATH = ["coffee_payment.formats"]
ROOT_URLCONF = "coffee_payment.urls"
ASGI_APPLICATION = "coffee_payment.asgi.application"
WSGI_APPLICATION = "coffee_payment.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# DATABASES
# ------------------------------------------------------------------------------
DATABASES = {"default": conf.database}

# APPS
# ------------------------------------------------------------------------------
INSTALLED_APPS = [
    # django.contrib.admin, with a site that refuses malformed ids in actions (coffee_payment/admin_site.py).
    "coffee_payment.apps.AdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Registers ServeStatic's configuration checks (the middleware works without it).
    "servestatic",
    # Admin login throttling: failed attempts are counted in the database, shared by every worker.
    "axes",
    "coffee_payment",
    "payments",
]
# Development tools (devtools/: `manage.py seed_demo`) wherever a checkout has them (README's
# production quickstart seeds demo machines too); the image and a wheel do not carry them.
if (BASE_DIR / "devtools" / "__init__.py").is_file():
    INSTALLED_APPS.append("devtools")

# MIDDLEWARE
# ------------------------------------------------------------------------------
MIDDLEWARE = [
    # First: probes answer before anything that validates the Host header.
    "coffee_payment.middleware.ProbeMiddleware",
    # Before anything that reads the database with a cookie, path or parameter.
    "coffee_payment.middleware.RefuseNulMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Right after SecurityMiddleware, as ServeStatic documents: a static file answers here.
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # After sessions, before CommonMiddleware, as Django documents: the language from Accept-Language.
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # 503 with Retry-After when a view's database cannot answer (its only hook is process_exception).
    "payments.middleware.DatabaseUnavailableMiddleware",
    # Last, as django-axes documents: turns a locked-out login into its 429 answer. Not on the lean
    # path (nothing there logs in).
    "axes.middleware.AxesMiddleware",
]

# LEAN PATH
# ------------------------------------------------------------------------------
# The customer's pages and the API (coffee_payment/asgi_handler.py): no session, user or messages, so they
# skip that middleware and the thread switches it costs under ASGI. An entry ending in "/" is a
# prefix. The admin and static files keep the whole MIDDLEWARE above.
LEAN_PATHS = ("/health", "/ready", "/v1/")
# An ordered subset of MIDDLEWARE (checked): what every lean path still needs. Host validation and
# APPEND_SLASH (CommonMiddleware), security headers, CSRF for the payment form and X-Frame-Options.
# Stock middleware listed here has its hooks run on the event loop: only middleware that does no
# I/O in them belongs here (CsrfViewMiddleware qualifies while CSRF_USE_SESSIONS is off).
LEAN_MIDDLEWARE = [
    "coffee_payment.middleware.ProbeMiddleware",
    "coffee_payment.middleware.RefuseNulMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # The customer pages' language (no I/O: it reads Accept-Language, and a cookie if there is one).
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "payments.middleware.DatabaseUnavailableMiddleware",
]

# TEMPLATES
# ------------------------------------------------------------------------------
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# STATIC
# ------------------------------------------------------------------------------
# ServeStatic (WhiteNoise's design with an async middleware, so it adds no thread hop to an ASGI
# request) serves the files from the workers. Production serves what `collectstatic` gathered into
# STATIC_ROOT (the container image does it at build time): content-hashed names, pre-compressed,
# cached for a year. The other layers serve straight from the apps' static folders, so the tests
# and `make run` need no collectstatic.
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
COLLECTED_STATIC = conf.layer == "production"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "servestatic.storage.CompressedManifestStaticFilesStorage"
            if COLLECTED_STATIC
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        ),
    },
}
SERVESTATIC_USE_FINDERS = not COLLECTED_STATIC

# SECURITY
# ------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
# An expired Pay form: the customer error page, in the customer's language, back to the order.
CSRF_FAILURE_VIEW = "payments.views.csrf_failure"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
# No SECURE_PROXY_SSL_HEADER: TLS ends at the ingress, and uvicorn sets the request's scheme from
# X-Forwarded-Proto only when the peer is in GUNICORN_FORWARDED_ALLOW_IPS, so request.is_secure()
# follows that one rule (docs/architecture.md, "Security").
# HTTPS enforcement (docs/architecture.md, "Security"): on in the production layer.
SECURE_SSL_REDIRECT = conf.security.ssl_redirect
SECURE_HSTS_SECONDS = conf.security.hsts_seconds
SECURE_HSTS_INCLUDE_SUBDOMAINS = conf.security.hsts_include_subdomains
SECURE_HSTS_PRELOAD = conf.security.hsts_preload
# W021 asks for the preload directive, which is an application to browsers' built-in lists: the
# domain owner's decision (DJANGO_SECURE_HSTS_PRELOAD), not a default.
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]

# ADMIN LOGIN THROTTLING (django-axes)
# ------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out client before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = conf.security.admin_login_failure_limit
AXES_COOLOFF_TIME = datetime.timedelta(minutes=conf.security.admin_lockout_minutes)
# Locked out: the client address, whatever user name it tries. The address is REMOTE_ADDR, which
# uvicorn takes from X-Forwarded-For only for a peer in GUNICORN_FORWARDED_ALLOW_IPS; axes reads it
# (its ipware branch, if that package were installed, would look at REMOTE_ADDR alone too).
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]
AXES_RESET_ON_SUCCESS = True
# No banner at every start (each manage.py command's output would begin with it); a lockout's log
# line names the locked-out address, not the user agent the client sent.
AXES_VERBOSE = False

# LOGGING
# ------------------------------------------------------------------------------
LOGGING = logging_config(log_format=conf.log_format, level=conf.log_level)

# PAYMENTS
# ------------------------------------------------------------------------------
PAYMENT_PROVIDER_URL = conf.provider.url
# Shop id -> secret key; only the merchant's shop id is stored in the database.
PAYMENT_PROVIDER_SECRETS = dict(conf.provider.secrets)
PAYMENT_PROVIDER_CONNECT_TIMEOUT = conf.provider.connect_timeout
PAYMENT_PROVIDER_READ_TIMEOUT = conf.provider.read_timeout
PAYMENT_PROVIDER_RETRIES = conf.provider.retries
# Notifications: the addresses they may come from (empty: any; REMOTE_ADDR, the one client address
# of docs/architecture.md "Security"), and what forged ones may cost (payments/notification_limits.py).
PAYMENT_PROVIDER_NOTIFICATION_ADDRESSES = conf.provider.notification_addresses
PAYMENT_PROVIDER_REREAD_SECONDS = conf.provider.reread_seconds
PAYMENT_PROVIDER_UNKNOWN_READS_PER_MINUTE = conf.provider.unknown_reads_per_minute
ORDER_EXPIRY_MINUTES = conf.order_expiry_minutes
ORDER_RECONCILE_AFTER_MINUTES = conf.order_reconcile_after_minutes
ORDER_HOLD_MAX_MINUTES = conf.order_hold_max_minutes
ORDER_RETENTION_DAYS = conf.order_retention_days
ORDER_PROVIDER_RECHECK_SECONDS = conf.order_provider_recheck_seconds
ORDER_STATUS_PROVIDER_BUDGET_SECONDS = conf.order_status_provider_budget_seconds
ORDER_RECONCILE_LIST_HOURS = conf.order_reconcile_list_hours
# Provider calls of a request fit in its deadline (coffee_payment/conf_values.py checks the settings
# above against GUNICORN_TIMEOUT): the back-off before retry n, and what they leave of the deadline.
PAYMENT_PROVIDER_RETRY_BACKOFF = PROVIDER_RETRY_BACKOFF
PAYMENT_PROVIDER_DEADLINE_MARGIN = PROVIDER_DEADLINE_MARGIN
# The deadline of the request being served (time.monotonic(), or None outside one).
REQUEST_DEADLINE_CALLABLE = "coffee_payment.request_timeout.request_deadline"
ORDER_MAKE_WINDOW_SECONDS = conf.order_make_window_seconds
ORDER_MAKE_TIMEOUT_SECONDS = conf.order_make_timeout_seconds
# Derived (coffee_payment/conf_values.py): how often each worker closes due vend windows.
ORDER_MAKE_WINDOW_CHECK_SECONDS = conf.order_make_window_check_seconds
DEVICE_OFFLINE_AFTER_SECONDS = conf.device_offline_after_seconds
# Derived: a machine's last call is written at most once per this.
DEVICE_SEEN_INTERVAL_SECONDS = conf.device_seen_interval_seconds
ORDER_CONTACT_RETENTION_DAYS = conf.order_contact_retention_days
# The X-Request-ID of the request being served (or None), sent on every provider call.
REQUEST_ID_CALLABLE = "coffee_payment.request_id.request_id_current"

# PROBES
# ------------------------------------------------------------------------------
# Paths answered for any Host header: kubelet probes send the pod IP as Host.
PROBE_PATHS = ("/health", "/ready")
# ... over plain HTTP: never redirected to HTTPS. (ProbeMiddleware answers them before
# SecurityMiddleware anyway; this keeps it so if the middleware order ever changes.)
SECURE_REDIRECT_EXEMPT = [rf"^{re.escape(path.lstrip('/'))}$" for path in PROBE_PATHS]
# Readiness gives the database this long to answer before reporting 503.
READINESS_DATABASE_TIMEOUT = 2.0
# /metrics answers on this port alone, any Host (coffee_payment/metrics.py); 0: on none.
METRICS_PORT = conf.server.metrics_port

# REQUEST TIMEOUT
# ------------------------------------------------------------------------------
# Seconds a request may take before coffee_payment.asgi answers 504 (408 for a slow body):
# GUNICORN_TIMEOUT. A drain waits GUNICORN_GRACEFUL_TIMEOUT, by default the same, so it never cuts
# a request that arrived before the stop signal and is still within this limit.
REQUEST_TIMEOUT = conf.server.timeout

# PUBLIC ADDRESS
# ------------------------------------------------------------------------------
# Where customers reach the site ("https://pay.example.com"): links the server hands out to the
# provider (the return URL) are built on it, never on the request's Host or X-Forwarded-Proto.
PUBLIC_BASE_URL = conf.public_base_url

# REQUEST BODY LIMIT
# ------------------------------------------------------------------------------
# GUNICORN_MAX_BODY_BYTES: coffee_payment.asgi answers 413 to a larger body before reading it.
# Django's own limit agrees, and a body that is accepted stays in memory: nothing is spooled to
# /tmp (a small memory-backed volume in the pod).
REQUEST_BODY_LIMIT = conf.server.max_body_bytes
DATA_UPLOAD_MAX_MEMORY_SIZE = REQUEST_BODY_LIMIT
FILE_UPLOAD_MAX_MEMORY_SIZE = REQUEST_BODY_LIMIT
