"""Django settings, assigned by name from the one validated settings object (coffee_payment.conf)."""

from __future__ import annotations

from coffee_payment.conf import BASE_DIR, settings as conf
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
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "coffee_payment",
    "payments",
]

# MIDDLEWARE
# ------------------------------------------------------------------------------
MIDDLEWARE = [
    # First: probes answer before anything that validates the Host header.
    "coffee_payment.middleware.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# SECURITY
# ------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
# TLS ends at the ingress; trust its X-Forwarded-Proto so request.is_secure() is right.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# LOGGING
# ------------------------------------------------------------------------------
LOGGING = logging_config(log_format=conf.log_format, level=conf.log_level)

# PROBES
# ------------------------------------------------------------------------------
# Paths answered for any Host header: kubelet probes send the pod IP as Host.
PROBE_PATHS = ("/health", "/ready")
# Readiness gives the database this long to answer before reporting 503.
READINESS_DATABASE_TIMEOUT = 2.0

# REQUEST TIMEOUT
# ------------------------------------------------------------------------------
# Seconds a request may take before coffee_payment.asgi answers 504 (408 for a slow body):
# GUNICORN_TIMEOUT. A drain waits GUNICORN_GRACEFUL_TIMEOUT, by default the same, so it never cuts
# a request that arrived before the stop signal and is still within this limit.
REQUEST_TIMEOUT = conf.server.timeout
