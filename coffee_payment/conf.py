"""The one place that reads the environment and config/settings.toml, and validates both.

Dynaconf merges the TOML layers ([default] < [<DJANGO_ENV>]); the environment variables listed
below override the merged layer. Every value is validated here, once, and handed out as one typed
`Settings` object: Django's settings module and config/gunicorn.py only read it.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import secrets
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
    _check_secret_key as django_secret_key_is_strong,
)
from dynaconf import Dynaconf

BASE_DIR = Path(__file__).resolve().parent.parent
SETTINGS_FILE = BASE_DIR / "config" / "settings.toml"

LAYER_VARIABLE = "DJANGO_ENV"
LAYERS = ("development", "production", "testing")
# Fail safe: a pod that forgot DJANGO_ENV gets the strict layer, never DEBUG.
DEFAULT_LAYER = "production"

# Gunicorn reads these itself; they are not ours to warn about.
GUNICORN_OWN_VARIABLES = frozenset({"GUNICORN_CMD_ARGS", "GUNICORN_PID", "GUNICORN_FD"})

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "text")
SECRET_MASK = "********"

_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
# YooKassa shop ids are digits; letters, "-" and "_" allow test shops such as the fake provider's.
_SHOP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line meant for the operator."""


@dataclass(frozen=True)
class IntSetting:
    key: str
    variable: str
    low: int
    high: int

    @property
    def allowed(self) -> str:
        return f"{self.low}..{self.high}"


# The server's whole-number settings: key under [*.gunicorn], variable, and allowed range.
# workers: 64 is far past what one pod should run (size pods, not workers); timeouts: an hour.
SERVER_INT_SETTINGS = (
    IntSetting("workers", "GUNICORN_WORKERS", 1, 64),
    IntSetting("port", "GUNICORN_PORT", 1, 65535),
    IntSetting("timeout", "GUNICORN_TIMEOUT", 1, 3600),
    IntSetting("graceful_timeout", "GUNICORN_GRACEFUL_TIMEOUT", 1, 3600),
    IntSetting("max_requests", "GUNICORN_MAX_REQUESTS", 0, 10_000_000),
    IntSetting("max_requests_jitter", "GUNICORN_MAX_REQUESTS_JITTER", 0, 10_000_000),
    IntSetting("keepalive", "GUNICORN_KEEPALIVE", 1, 300),
    # Hostile clients (PROJECT.md, "Request limits"). Header section: at least what browsers and
    # proxies send with cookies, at most 1 MiB. Header timeout: whole seconds, up to 5 minutes.
    # Body: 1 KiB (a webhook is a few hundred bytes) to 64 MiB (held in memory, never spooled).
    IntSetting("max_header_bytes", "GUNICORN_MAX_HEADER_BYTES", 4096, 1_048_576),
    IntSetting("header_timeout", "GUNICORN_HEADER_TIMEOUT", 1, 300),
    IntSetting("max_body_bytes", "GUNICORN_MAX_BODY_BYTES", 1024, 67_108_864),
)

# Payment settings that are whole numbers. Retries: each one repeats a provider call with the same
# Idempotence-Key, so more only lengthen the customer's wait. Pool: per worker process.
PROVIDER_RETRIES = IntSetting("provider.retries", "PAYMENT_PROVIDER_RETRIES", 0, 5)
ORDER_EXPIRY_MINUTES = IntSetting("orders.expiry_minutes", "ORDER_EXPIRY_MINUTES", 1, 1440)
DATABASE_POOL_MAX_SIZE = IntSetting("database_pool_max_size", "DATABASE_POOL_MAX_SIZE", 1, 100)
# Money settings of `manage.py reconcile_payments`. Hold: the provider keeps a held amount for 7
# days at most (YooKassa), so a hold is released well before that (6 days at the very most).
ORDER_RECONCILE_AFTER_MINUTES = IntSetting("orders.reconcile_after_minutes", "ORDER_RECONCILE_AFTER_MINUTES", 1, 1440)
ORDER_HOLD_MAX_MINUTES = IntSetting("orders.hold_max_minutes", "ORDER_HOLD_MAX_MINUTES", 1, 8640)
ORDER_RETENTION_DAYS = IntSetting("orders.retention_days", "ORDER_RETENTION_DAYS", 1, 3650)
ORDER_MONEY_SETTINGS = (ORDER_RECONCILE_AFTER_MINUTES, ORDER_HOLD_MAX_MINUTES, ORDER_RETENTION_DAYS)
# HSTS: two years is the longest that browsers' preload lists ask for; 0 turns the header off.
HSTS_SECONDS = IntSetting("security.hsts_seconds", "DJANGO_SECURE_HSTS_SECONDS", 0, 63_072_000)
# Admin login throttling (django-axes): failures from one client address before it is locked out,
# and for how long.
ADMIN_LOGIN_FAILURE_LIMIT = IntSetting("security.admin_login_failure_limit", "DJANGO_ADMIN_LOGIN_FAILURE_LIMIT", 1, 100)
ADMIN_LOCKOUT_MINUTES = IntSetting("security.admin_lockout_minutes", "DJANGO_ADMIN_LOCKOUT_MINUTES", 1, 10080)
SECURITY_INT_SETTINGS = (HSTS_SECONDS, ADMIN_LOGIN_FAILURE_LIMIT, ADMIN_LOCKOUT_MINUTES)
# Security switches: dotted key -> variable.
SECURITY_BOOL_SETTINGS = {
    "security.ssl_redirect": "DJANGO_SECURE_SSL_REDIRECT",
    "security.hsts_include_subdomains": "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "security.hsts_preload": "DJANGO_SECURE_HSTS_PRELOAD",
}


@dataclass(frozen=True)
class SecondsSetting:
    key: str
    variable: str
    low: float
    high: float

    @property
    def allowed(self) -> str:
        return f"{self.low:g}..{self.high:g} seconds"


PROVIDER_CONNECT_TIMEOUT = SecondsSetting("provider.connect_timeout", "PAYMENT_PROVIDER_CONNECT_TIMEOUT", 0.1, 30)
PROVIDER_READ_TIMEOUT = SecondsSetting("provider.read_timeout", "PAYMENT_PROVIDER_READ_TIMEOUT", 0.1, 60)

# Every variable this module reads, mapped to its dotted settings key.
VARIABLES: dict[str, str] = {
    "DJANGO_SECRET_KEY": "secret_key",
    "DJANGO_DEBUG": "debug",
    "DJANGO_ALLOWED_HOSTS": "allowed_hosts",
    "DJANGO_LOG_LEVEL": "log_level",
    "DJANGO_LOG_FORMAT": "log_format",
    "DATABASE_URL": "database_url",
    "GUNICORN_HOST": "gunicorn.host",
    "GUNICORN_METRICS_DIR": "gunicorn.metrics_dir",
    **{s.variable: f"gunicorn.{s.key}" for s in SERVER_INT_SETTINGS},
    "PAYMENT_PROVIDER_URL": "provider.url",
    "PAYMENT_PROVIDER_SECRETS": "provider.secrets",
    **{s.variable: s.key for s in (PROVIDER_CONNECT_TIMEOUT, PROVIDER_READ_TIMEOUT, PROVIDER_RETRIES)},
    ORDER_EXPIRY_MINUTES.variable: ORDER_EXPIRY_MINUTES.key,
    DATABASE_POOL_MAX_SIZE.variable: DATABASE_POOL_MAX_SIZE.key,
    "DJANGO_PUBLIC_BASE_URL": "public_base_url",
    "DATABASE_ALLOW_SQLITE": "database_allow_sqlite",
    **{s.variable: s.key for s in ORDER_MONEY_SETTINGS},
    **{s.variable: s.key for s in SECURITY_INT_SETTINGS},
    **{variable: key for key, variable in SECURITY_BOOL_SETTINGS.items()},
}
KEY_VARIABLES = {key: variable for variable, key in VARIABLES.items()}


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    workers: int
    timeout: int
    graceful_timeout: int
    max_requests: int
    max_requests_jitter: int
    keepalive: int
    max_header_bytes: int
    header_timeout: int
    max_body_bytes: int
    # prometheus_client's multiprocess directory: every worker's metric files (config/gunicorn.py).
    metrics_dir: str

    @property
    def bind(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ProviderSettings:
    """The payment provider (YooKassa API v3 or the fake one): where, how long to wait, who we are."""

    url: str
    # Shop id -> secret key, from PAYMENT_PROVIDER_SECRETS only. repr=False: never in a traceback.
    secrets: Mapping[str, str] = field(repr=False)
    connect_timeout: float
    read_timeout: float
    retries: int


@dataclass(frozen=True)
class SecuritySettings:
    """HTTPS enforcement (Django's SecurityMiddleware) and admin login throttling (django-axes)."""

    ssl_redirect: bool
    hsts_seconds: int
    hsts_include_subdomains: bool
    hsts_preload: bool
    admin_login_failure_limit: int
    admin_lockout_minutes: int


@dataclass(frozen=True)
class Settings:
    layer: str
    debug: bool
    secret_key: str
    allowed_hosts: tuple[str, ...]
    database_url: str
    database: dict[str, Any]
    database_pool_max_size: int
    log_level: str
    log_format: str
    time_zone: str
    server: ServerSettings
    provider: ProviderSettings
    order_expiry_minutes: int
    # Where customers reach the site, e.g. "https://pay.example.com": the provider's return URL.
    public_base_url: str
    database_allow_sqlite: bool
    order_reconcile_after_minutes: int
    order_hold_max_minutes: int
    order_retention_days: int
    security: SecuritySettings
    # Dotted key -> where the value came from: "[default]", "[production]", "env DJANGO_DEBUG", ...
    sources: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def report(self) -> list[tuple[str, str, str]]:
        """(key, value shown to an operator, source) rows; secrets masked."""
        values: dict[str, Any] = {
            "layer": self.layer,
            "debug": self.debug,
            "secret_key": SECRET_MASK,
            "allowed_hosts": ",".join(self.allowed_hosts),
            "database_url": mask_database_url(self.database_url),
            "log_level": self.log_level,
            "log_format": self.log_format,
            "time_zone": self.time_zone,
            **{f"gunicorn.{k}": v for k, v in vars(self.server).items()},
            "database_pool_max_size": self.database_pool_max_size,
            "provider.url": self.provider.url,
            "provider.secrets": ",".join(f"{shop}:{SECRET_MASK}" for shop in self.provider.secrets) or "-",
            "provider.connect_timeout": self.provider.connect_timeout,
            "provider.read_timeout": self.provider.read_timeout,
            "provider.retries": self.provider.retries,
            "orders.expiry_minutes": self.order_expiry_minutes,
            "public_base_url": self.public_base_url,
            "database_allow_sqlite": self.database_allow_sqlite,
            "orders.reconcile_after_minutes": self.order_reconcile_after_minutes,
            "orders.hold_max_minutes": self.order_hold_max_minutes,
            "orders.retention_days": self.order_retention_days,
            **{f"security.{k}": v for k, v in vars(self.security).items()},
        }
        return [(key, str(value), self.sources.get(key, "")) for key, value in values.items()]


def mask_database_url(url: str) -> str:
    """`url` with its password (and any `password=` query value) masked; the user name stays.

    The user information ends at the LAST "@" (a password may contain "@"); without "://" nothing
    tells user from password, so everything before that "@" is masked.
    """
    head, at, tail = url.rpartition("@")
    if at:
        scheme, separator, userinfo = head.partition("://")
        user, colon, _ = userinfo.partition(":")
        if not separator:
            head = SECRET_MASK
        elif colon:
            head = f"{scheme}://{user}:{SECRET_MASK}"
        url = f"{head}@{tail}"
    # To the end: a password with an unencoded "&" or "#" would otherwise show its tail.
    return re.sub(r"(?i)(password=).*", rf"\1{SECRET_MASK}", url)


def mask_url(url: str) -> str:
    """`url` with all user information masked: a provider URL's user part may be a token."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, separator, _ = head.partition("://")
    return f"{scheme}://{SECRET_MASK}@{tail}" if separator else f"{SECRET_MASK}@{tail}"


# What an error message or the config report may show of a value: secrets never, URLs masked.
_SHOWN: dict[str, Callable[[str], str]] = {
    "secret_key": lambda value: SECRET_MASK,
    "provider.secrets": lambda value: SECRET_MASK,
    "database_url": mask_database_url,
    "provider.url": mask_url,
}


def _quote(raw: object) -> str:
    return repr(raw) if isinstance(raw, str) else repr(str(raw))


class _Resolver:
    """Merged layer values plus environment overrides, remembering where each value came from."""

    def __init__(self, *, environ: Mapping[str, str], settings_file: Path, layer: str) -> None:
        self.layer = layer
        self.settings_file = settings_file
        self.sources: dict[str, str] = {"layer": _source_of_layer(environ)}
        try:
            with settings_file.open("rb") as fh:
                self.raw_layers: dict[str, Any] = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {settings_file}: {exc}") from None
        merged = Dynaconf(
            settings_files=[str(settings_file)],
            environments=True,
            # Dynaconf reads no environment variable of its own accord: the table above is the
            # whole list, so `show_config` can name the source of every value.
            loaders=[],
            load_dotenv=False,
            merge_enabled=True,
        )
        merged.setenv(layer)
        self.merged = merged
        self.overrides: dict[str, str] = {}
        for variable, key in VARIABLES.items():
            value = environ.get(variable, "").strip()
            # Compose files and Helm charts render unset values as empty strings.
            if value:
                self.overrides[key] = value

    def lookup(self, key: str) -> tuple[Any, str] | None:
        """(value, where it was written) or None when nothing sets the key."""
        shown = _SHOWN.get(key)
        if key in self.overrides:
            self.sources[key] = f"env {KEY_VARIABLES[key]}"
            value = self.overrides[key]
            return value, f"{KEY_VARIABLES[key]}={_quote(shown(value) if shown else value)}"
        if self.merged.get(key) is None:
            return None
        value = self.merged.get(key)
        where = self.layer if _defines(self.raw_layers.get(self.layer, {}), key) else "default"
        self.sources[key] = f"[{where}]"
        text = _quote(shown(str(value))) if shown else repr(value)
        return value, f"{self.settings_file.name} [{where}] {key}={text}"


def _defines(table: Mapping[str, Any], dotted: str) -> bool:
    node: Any = table
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _source_of_layer(environ: Mapping[str, str]) -> str:
    return f"env {LAYER_VARIABLE}" if environ.get(LAYER_VARIABLE, "").strip() else "built-in"


def _whole_number(value: Any, where: str, *, setting: IntSetting) -> int:
    allowed = f"(allowed: {setting.allowed})"
    # TOML in the file gives int; the environment gives text. bool is an int to Python: refuse it.
    if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value.strip()):
        number = int(value.strip())
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise ConfigError(f"{where} is not a whole number {allowed}")
    if not setting.low <= number <= setting.high:
        raise ConfigError(f"{where} is out of range {allowed}")
    return number


def _seconds(value: Any, where: str, *, setting: SecondsSetting) -> float:
    allowed = f"(allowed: {setting.allowed})"
    # Plain decimals only: Dynaconf-style parsing would take "1e3", "inf" or "nan" as a number.
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        number = float(value.strip())
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ConfigError(f"{where} is not a number of seconds {allowed}")
    if not setting.low <= number <= setting.high:
        raise ConfigError(f"{where} is out of range {allowed}")
    return number


def _boolean(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{where} is not a boolean (allowed: true/false, 1/0, yes/no, on/off)")


def _host_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(host.strip() for host in value.split(",") if host.strip())
    if isinstance(value, list) and all(isinstance(host, str) and host for host in value):
        return tuple(value)
    raise ConfigError(f"{where} is not a list of host names (allowed: comma-separated names)")


def _choice(value: Any, where: str, *, allowed: tuple[str, ...], normalise: Callable[[str], str]) -> str:
    if isinstance(value, str) and normalise(value.strip()) in allowed:
        return normalise(value.strip())
    raise ConfigError(f"{where} is not one of {', '.join(allowed)}")


def _text(value: Any, where: str) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ConfigError(f"{where} is not a non-empty string")


# settings.toml's default, for a settings file that has none.
DEFAULT_METRICS_DIR = "/dev/shm/coffee-payment-metrics"


def _directory(value: Any, where: str) -> str:
    """An absolute directory path; the server creates it (and empties it of metric files) at start."""
    text = _text(value, where)
    if not text.startswith("/") or "\x00" in text or text.rstrip("/") == "":
        raise ConfigError(f"{where} is not an absolute directory path (allowed: /path/to/dir, not / itself)")
    return text.rstrip("/")


# Where `make run` answers: the public base URL of a non-production layer that sets none.
DEVELOPMENT_BASE_URL = "http://localhost:8000"

SUPPORTED_ENGINES = ("django.db.backends.sqlite3", "django.db.backends.postgresql")
DATABASE_URL_FORMS = "sqlite:///path, postgres://user:password@host:port/name"


def _http_url(value: Any, where: str, *, path: bool = True) -> str:
    parts = urllib.parse.urlsplit(value.strip()) if isinstance(value, str) else None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.query
        or parts.fragment
        or (not path and parts.path.strip("/"))
    ):
        form = "http(s)://host[:port]/path" if path else "http(s)://host[:port], no path"
        raise ConfigError(f"{where} is not a base URL (allowed: {form}, no user, query or fragment)")
    # Paths are joined as base + "/payments": a trailing slash would double it.
    return value.strip().rstrip("/")


def _provider_secrets(found: tuple[Any, str] | None) -> dict[str, str]:
    """`shop_id:secret,shop_id:secret` from the environment; the message never shows a secret."""
    if found is None:
        return {}
    value, where = found
    if not where.startswith("PAYMENT_PROVIDER_SECRETS="):
        # A secret committed to settings.toml would be in every clone of the repository.
        raise ConfigError(f"{where.split('=')[0]} is refused: provider secrets come from PAYMENT_PROVIDER_SECRETS only")
    secrets_by_shop: dict[str, str] = {}
    entries = [entry.strip() for entry in str(value).split(",") if entry.strip()]
    allowed = "(allowed: comma-separated shop_id:secret, shop id of letters, digits, - and _)"
    for number, entry in enumerate(entries, start=1):
        shop, colon, secret = entry.partition(":")
        shop, secret = shop.strip(), secret.strip()
        # Nothing of a malformed entry is shown: "secret" alone or "secret:" may be a secret.
        if not colon or not _SHOP_ID.fullmatch(shop) or not secret:
            raise ConfigError(f"PAYMENT_PROVIDER_SECRETS entry {number} is not shop_id:secret (value not shown) {allowed}")
        if shop in secrets_by_shop:
            raise ConfigError(f"PAYMENT_PROVIDER_SECRETS entry {number} repeats shop {shop!r} (allowed: each shop once)")
        secrets_by_shop[shop] = secret
    return secrets_by_shop


def _provider(resolver: _Resolver) -> ProviderSettings:
    url = _required(resolver, "provider.url")
    timeouts = {}
    for setting in (PROVIDER_CONNECT_TIMEOUT, PROVIDER_READ_TIMEOUT):
        found = _required(resolver, setting.key)
        timeouts[setting.key] = _seconds(*found, setting=setting)
    resolver.sources.setdefault("provider.secrets", "not set")
    return ProviderSettings(
        url=_http_url(*url),
        secrets=_provider_secrets(resolver.lookup("provider.secrets")),
        connect_timeout=timeouts[PROVIDER_CONNECT_TIMEOUT.key],
        read_timeout=timeouts[PROVIDER_READ_TIMEOUT.key],
        retries=_whole_number(*_required(resolver, PROVIDER_RETRIES.key), setting=PROVIDER_RETRIES),
    )


# libpq waits at least 2 s whatever the value; /ready's 2 s bound relies on connects giving up too.
DATABASE_CONNECT_TIMEOUT = 2
# Seconds a request waits for a pooled connection before failing, rather than queueing forever.
DATABASE_POOL_TIMEOUT = 10
# SQLite: seconds a connection waits for the one write lock before "database is locked"; well
# inside GUNICORN_TIMEOUT's default, far longer than any of this server's write transactions.
SQLITE_BUSY_TIMEOUT = 20
# Every SQLite connection: WAL (readers never wait for the writer; stored in the file),
# synchronous=NORMAL (WAL needs no fsync per commit to stay consistent), and transactions that take
# the write lock at BEGIN (IMMEDIATE), where the busy timeout applies: a DEFERRED transaction that
# read first and then writes fails at once with "database is locked" when another writer got there
# first, and waiting cannot help it.
SQLITE_OPTIONS: dict[str, Any] = {
    "transaction_mode": "IMMEDIATE",
    "timeout": SQLITE_BUSY_TIMEOUT,
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
}


def _database(url: str, where: str, *, pool_max_size: int) -> dict[str, Any]:
    try:
        config = dj_database_url.parse(url)
    except Exception:  # dj-database-url raises several types for a malformed URL
        config = {}
    if config.get("ENGINE") not in SUPPORTED_ENGINES:
        raise ConfigError(f"{where} is not a database URL (allowed: {DATABASE_URL_FORMS})")
    if config["ENGINE"] == "django.db.backends.sqlite3":
        name = Path(config["NAME"])
        if str(name) != ":memory:" and not name.is_absolute():
            # Relative SQLite paths are relative to the project, not to wherever the server starts.
            config["NAME"] = str(BASE_DIR / name)
        # Options in the URL (?timeout=5) win over these.
        config["OPTIONS"] = {**SQLITE_OPTIONS, **config.get("OPTIONS", {})}
    # Under ASGI every request may run in a fresh thread: persistent connections would leak.
    config["CONN_MAX_AGE"] = 0
    if config["ENGINE"] == "django.db.backends.postgresql":
        # Django's own psycopg pool gives those threads warm connections instead; one pool per
        # worker process, opened on first use (after the fork, never in the Gunicorn master).
        config["OPTIONS"] = {
            **config.get("OPTIONS", {}),
            "connect_timeout": DATABASE_CONNECT_TIMEOUT,
            "pool": {"min_size": 1, "max_size": pool_max_size, "timeout": DATABASE_POOL_TIMEOUT},
        }
        # With a pool, Django 5.2 turns this into psycopg_pool's `check=ConnectionPool.check_connection`:
        # each connection is tested (an empty query) as it leaves the pool and replaced if dead, so
        # a PostgreSQL restart fails no request on a connection it killed.
        config["CONN_HEALTH_CHECKS"] = True
    return config


def _strong_secret_key(value: Any, where: str) -> str:
    """Django's own W009 rule (`check --deploy`), enforced at start; the key is never shown."""
    key = _text(value, where)
    if not django_secret_key_is_strong(key):
        variable = where.split("=")[0]
        raise ConfigError(
            f"{variable} is too weak (value not shown; allowed: at least {SECRET_KEY_MIN_LENGTH} characters, "
            f"{SECRET_KEY_MIN_UNIQUE_CHARACTERS} of them different, not starting with "
            f"{SECRET_KEY_INSECURE_PREFIX!r}; e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))')"
        )
    return key


def _security(resolver: _Resolver) -> SecuritySettings:
    numbers = {s.key: _whole_number(*_required(resolver, s.key), setting=s) for s in SECURITY_INT_SETTINGS}
    switches = {key: _boolean(*_required(resolver, key)) for key in SECURITY_BOOL_SETTINGS}
    return SecuritySettings(
        ssl_redirect=switches["security.ssl_redirect"],
        hsts_seconds=numbers[HSTS_SECONDS.key],
        hsts_include_subdomains=switches["security.hsts_include_subdomains"],
        hsts_preload=switches["security.hsts_preload"],
        admin_login_failure_limit=numbers[ADMIN_LOGIN_FAILURE_LIMIT.key],
        admin_lockout_minutes=numbers[ADMIN_LOCKOUT_MINUTES.key],
    )


def _required(resolver: _Resolver, key: str) -> tuple[Any, str]:
    found = resolver.lookup(key)
    if found is None:
        raise ConfigError(f"{KEY_VARIABLES[key]} is required in the {resolver.layer} layer and is not set")
    return found


def _layer(environ: Mapping[str, str]) -> str:
    layer = environ.get(LAYER_VARIABLE, "").strip() or DEFAULT_LAYER
    if layer not in LAYERS:
        raise ConfigError(f"{LAYER_VARIABLE}={layer!r} is not a settings layer (allowed: {', '.join(LAYERS)})")
    return layer


def _unknown_variable_warnings(environ: Mapping[str, str]) -> tuple[str, ...]:
    known = [v for v in VARIABLES if v.startswith("GUNICORN_")]
    warnings = []
    for name in sorted(environ):
        if name.startswith("GUNICORN_") and name not in VARIABLES and name not in GUNICORN_OWN_VARIABLES:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}"
            warnings.append(f"{name} is not a setting of this server and is ignored{hint}")
    return tuple(warnings)


def _server(resolver: _Resolver) -> ServerSettings:
    values: dict[str, Any] = {}
    for setting in SERVER_INT_SETTINGS:
        found = resolver.lookup(f"gunicorn.{setting.key}")
        if found is None:
            continue
        values[setting.key] = _whole_number(*found, setting=setting)
    # The drain after SIGTERM gets as long as a request may take, unless told otherwise.
    if "graceful_timeout" not in values and "timeout" in values:
        values["graceful_timeout"] = values["timeout"]
        resolver.sources["gunicorn.graceful_timeout"] = "= gunicorn.timeout"
    host = _required(resolver, "gunicorn.host")
    values["host"] = _text(*host)
    metrics_dir = resolver.lookup("gunicorn.metrics_dir")
    values["metrics_dir"] = _directory(*metrics_dir) if metrics_dir else DEFAULT_METRICS_DIR
    resolver.sources.setdefault("gunicorn.metrics_dir", "built-in")
    missing = [s.variable for s in SERVER_INT_SETTINGS if s.key not in values]
    if missing:
        raise ConfigError(f"{missing[0]} is not set and {resolver.settings_file.name} has no default for it")
    return ServerSettings(**values)


def load_settings(*, environ: Mapping[str, str], settings_file: Path = SETTINGS_FILE) -> Settings:
    """Resolve and validate every setting; raise ConfigError naming the first bad one."""
    layer = _layer(environ)
    resolver = _Resolver(environ=environ, settings_file=settings_file, layer=layer)
    production = layer == "production"

    debug_found = resolver.lookup("debug")
    debug = _boolean(*debug_found) if debug_found else False
    if debug and production:
        raise ConfigError(f"{debug_found[1]} is refused in the production layer (DEBUG leaks internals)")
    resolver.sources.setdefault("debug", "built-in")

    if production:
        secret_key = _strong_secret_key(*_required(resolver, "secret_key"))
    else:
        found = resolver.lookup("secret_key")
        # A fresh key per start: nothing signed in development or tests needs to outlive the server.
        secret_key = _text(*found) if found else secrets.token_urlsafe(50)
        resolver.sources.setdefault("secret_key", "generated at start")

    hosts_found = _required(resolver, "allowed_hosts") if production else resolver.lookup("allowed_hosts")
    allowed_hosts = _host_list(*hosts_found) if hosts_found else ()
    if production and not allowed_hosts:
        raise ConfigError("DJANGO_ALLOWED_HOSTS is required in the production layer and lists no host")

    url, url_where = _required(resolver, "database_url")
    url = _text(url, url_where)
    pool_max_size = _whole_number(*_required(resolver, DATABASE_POOL_MAX_SIZE.key), setting=DATABASE_POOL_MAX_SIZE)
    database = _database(url, url_where, pool_max_size=pool_max_size)
    allow_found = resolver.lookup("database_allow_sqlite")
    allow_sqlite = _boolean(*allow_found) if allow_found else False
    resolver.sources.setdefault("database_allow_sqlite", "built-in")
    if production and database["ENGINE"] == "django.db.backends.sqlite3" and not allow_sqlite:
        # One file, one writer at a time, no sharing between pods: fine for one replica, not a fleet.
        raise ConfigError(
            f"{mask_database_url(url_where)} is SQLite, refused in the production layer "
            "(use PostgreSQL, or set DATABASE_ALLOW_SQLITE=true for a single replica)"
        )

    # The provider's return URL, sent under the order's fixed Idempotence-Key: from here, never
    # from a request's Host or X-Forwarded-Proto, so every attempt sends the same body.
    found = _required(resolver, "public_base_url") if production else resolver.lookup("public_base_url")
    public_base_url = _http_url(*found, path=False) if found else DEVELOPMENT_BASE_URL
    resolver.sources.setdefault("public_base_url", "built-in")

    level = resolver.lookup("log_level")
    fmt = resolver.lookup("log_format")
    zone = resolver.lookup("time_zone")
    return Settings(
        layer=layer,
        debug=debug,
        secret_key=secret_key,
        allowed_hosts=allowed_hosts,
        database_url=url,
        database=database,
        database_pool_max_size=pool_max_size,
        log_level=_choice(*level, allowed=LOG_LEVELS, normalise=str.upper) if level else "INFO",
        log_format=_choice(*fmt, allowed=LOG_FORMATS, normalise=str.lower) if fmt else "json",
        time_zone=_text(*zone) if zone else "UTC",
        server=_server(resolver),
        provider=_provider(resolver),
        order_expiry_minutes=_whole_number(*_required(resolver, ORDER_EXPIRY_MINUTES.key), setting=ORDER_EXPIRY_MINUTES),
        public_base_url=public_base_url,
        database_allow_sqlite=allow_sqlite,
        order_reconcile_after_minutes=_whole_number(
            *_required(resolver, ORDER_RECONCILE_AFTER_MINUTES.key), setting=ORDER_RECONCILE_AFTER_MINUTES
        ),
        order_hold_max_minutes=_whole_number(*_required(resolver, ORDER_HOLD_MAX_MINUTES.key), setting=ORDER_HOLD_MAX_MINUTES),
        order_retention_days=_whole_number(*_required(resolver, ORDER_RETENTION_DAYS.key), setting=ORDER_RETENTION_DAYS),
        security=_security(resolver),
        sources=dict(resolver.sources),
        warnings=_unknown_variable_warnings(environ),
    )


@functools.cache
def process_settings() -> Settings:
    """This process's settings, loaded once; forked Gunicorn workers inherit the master's."""
    loaded = load_settings(environ=os.environ)
    for warning in loaded.warnings:
        log.warning(warning)
    return loaded


def __getattr__(name: str) -> Any:
    # `from coffee_payment.conf import settings` loads on first use, so ConfigError and
    # load_settings stay importable when the environment is broken.
    if name == "settings":
        return process_settings()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
