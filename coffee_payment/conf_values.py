"""What coffee_payment.conf hands out and the value work behind it: the typed settings objects, the
casts its Validators apply, masks for what an operator may see, and Django's database entry for a
validated URL. No environment is read here."""

from __future__ import annotations

import difflib
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from dynaconf import Validator


# Where `make run` answers: the public base URL of a non-production layer that sets none.
DEVELOPMENT_BASE_URL = "http://localhost:8000"
SQLITE, POSTGRESQL = "django.db.backends.sqlite3", "django.db.backends.postgresql"
DATABASE_URL_FORMS = "sqlite:///path, postgres://user:password@host:port/name"
# SQLite: WAL (readers never wait for the writer), synchronous=NORMAL (WAL needs no fsync per commit)
# and transactions that take the write lock at BEGIN, where the busy timeout (the database wait)
# applies: a DEFERRED one that read first fails at once with "database is locked" when another
# writer got there first.
SQLITE_CONN_MAX_AGE = 600  # seconds
SQLITE_OPTIONS = {"transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"}
# PostgreSQL: libpq waits at least 2 s whatever the value (/ready's 2 s bound relies on connects
# giving up too). A failed connection attempt is retried once this long after, then given up until
# the next request asks: the pool's own backoff (1 s, then doubling) outlasted short outages.
DATABASE_CONNECT_TIMEOUT, DATABASE_RECONNECT_TIMEOUT = 2, 0.25
# A request's wait for the database (a pooled connection, a lock), unless set: a few seconds, far
# longer than any of this server's write transactions, and half the request's time when that is
# shorter, so that a request waiting for the database still gets its 503 page.
DATABASE_WAIT_TIMEOUT = 3.0
# Settings that follow another when no layer or variable sets them: key -> how, for show_config.
DERIVED_WHEN_UNSET = {"gunicorn.graceful_timeout": "= gunicorn.timeout",
                      "database_wait_timeout": f"= min({DATABASE_WAIT_TIMEOUT:g}, gunicorn.timeout / 2)"}
# The pool of coffee_payment/postgresql: Django's PostgreSQL backend with bounded pool waits.
POSTGRESQL_POOLED = "coffee_payment.postgresql"
SECRET_MASK = "********"
# A provider call made for a request: before retry n it waits PROVIDER_RETRY_BACKOFF * n seconds,
# and it leaves the request PROVIDER_DEADLINE_MARGIN seconds of its deadline (GUNICORN_TIMEOUT) for
# the database write and the page after it (payments/provider.py).
PROVIDER_RETRY_BACKOFF, PROVIDER_DEADLINE_MARGIN = 0.2, 0.5
# Seconds between a worker's own drain deadline (GUNICORN_GRACEFUL_TIMEOUT) and the master's SIGKILL:
# Gunicorn's graceful_timeout is GUNICORN_GRACEFUL_TIMEOUT + KILL_MARGIN (config/gunicorn.py).
KILL_MARGIN = 2
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
# YooKassa shop ids are digits; letters, "-" and "_" allow test shops such as the fake provider's.
_SHOP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}

WEAK_KEY = (f"is too weak (value not shown; allowed: at least {SECRET_KEY_MIN_LENGTH} characters, "
            f"{SECRET_KEY_MIN_UNIQUE_CHARACTERS} of them different, not starting with {SECRET_KEY_INSECURE_PREFIX!r}; "
            "e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))')")


class ConfigError(Exception):
    """Settings are missing or malformed; the message is one line meant for the operator."""

    def __init__(self, message: str, *, rows: list[tuple[str, str, str]] | None = None) -> None:
        super().__init__(message)
        self.rows = rows  # the report, when only required variables are missing


class Refusal(str):
    """What a cast returns for a value it refuses: the reason, shown instead of the value."""


@dataclass(frozen=True)
class IntSetting:
    """A whole number under `key`, from `variable`, in low..high."""

    key: str
    variable: str
    low: float
    high: float
    kind = "a whole number"
    unit = ""

    @property
    def allowed(self) -> str:
        return f"{self.low}..{self.high}{self.unit}"

    def is_exact(self, value: Any) -> bool:
        # bool is an int to Python, and a TOML `true` would pass isinstance: refuse it.
        return type(value) is (float if self.unit else int)

    def validators(self, *, required: str) -> list[Validator]:
        """The value's type, then its range; every number must be set but those derived when unset."""
        must_exist = None if self.key in DERIVED_WHEN_UNSET else True
        messages = {"must_exist_true": required, "condition": f"is not {self.kind} (allowed: {self.allowed})"}
        parse = parse_seconds if self.unit else parse_whole_number
        return [
            Validator(self.key, must_exist=must_exist, cast=parse, condition=self.is_exact, messages=messages),
            Validator(self.key, gte=self.low, lte=self.high, when=Validator(self.key, condition=self.is_exact),
                      messages={"operations": f"is out of range (allowed: {self.allowed})"}),
        ]


class SecondsSetting(IntSetting):
    """A plain decimal number of seconds: "1e3", "inf" and "nan" are not."""

    kind = "a number of seconds"
    unit = " seconds"


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
    # /metrics is served on this port alone (0: nowhere), which no Service routes.
    metrics_port: int
    # Peers whose X-Forwarded-For and X-Forwarded-Proto count (Gunicorn's forwarded_allow_ips).
    forwarded_allow_ips: tuple[str, ...]
    # uvicorn's limit_concurrency: a request beyond this many connections or requests is answered 503.
    worker_connections: int

    @property
    def bind(self) -> str:
        return self.bind_port(self.port)

    def bind_port(self, port: int) -> str:
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"


@dataclass(frozen=True)
class ProviderSettings:
    """The payment provider (YooKassa API v3 or the fake one): where, how long to wait, who we are."""

    url: str
    secrets: Mapping[str, str] = field(repr=False)  # shop id -> secret key: never in a traceback
    connect_timeout: float
    read_timeout: float
    retries: int
    # Notifications: the senders accepted (empty: any), and what forged ones may cost in reads.
    notification_addresses: tuple[str, ...]
    reread_seconds: int
    unknown_reads_per_minute: int


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
    secret_key: str = field(repr=False)
    allowed_hosts: tuple[str, ...]
    database_url: str = field(repr=False)
    database: dict[str, Any] = field(repr=False)
    database_pool_max_size: int
    database_wait_timeout: float
    log_level: str
    log_format: str
    time_zone: str
    server: ServerSettings
    provider: ProviderSettings
    order_expiry_minutes: int
    public_base_url: str  # where customers reach the site: the provider's return URL is built on it
    database_allow_sqlite: bool
    order_reconcile_after_minutes: int
    order_hold_max_minutes: int
    order_retention_days: int
    order_provider_recheck_seconds: float
    order_status_provider_budget_seconds: float
    order_reconcile_list_hours: int
    # The vend window (payments.vend_window): a paid order not started this long after its payment
    # is closed; a started one not reported this long after its start is handed to the staff.
    order_make_window_seconds: int
    order_make_timeout_seconds: int
    # A machine with an API token that has called nothing for this long takes no orders.
    device_offline_after_seconds: int
    order_contact_retention_days: int
    security: SecuritySettings
    sources: Mapping[str, str]  # dotted key -> "[default]", "[production]", "env DJANGO_DEBUG", ...
    warnings: tuple[str, ...]
    rows: list[tuple[str, str, str]] = field(repr=False)

    @property
    def device_seen_interval_seconds(self) -> int:
        """A machine's last call is written at most once per this: a quarter of the offline limit
        keeps a poll a read almost always, and an offline machine noticed at most a quarter late."""
        return max(1, self.device_offline_after_seconds // 4)

    @property
    def order_make_window_check_seconds(self) -> float:
        """How often each server worker closes the vend windows that are due: a quarter of the
        window, at most 10 s, so the money goes back well within a minute of the window closing."""
        return min(10.0, self.order_make_window_seconds / 4)

    def report(self) -> list[tuple[str, str, str]]:
        """(key, value shown to an operator, source) rows; secrets masked."""
        return self.rows


def settings_from(values: Mapping[str, Any], **fields_without_key: Any) -> Settings:
    """A Settings from validated values by dotted key."""

    def section(name: str) -> dict[str, Any]:
        return {key.partition(".")[2]: value for key, value in values.items() if key.startswith(f"{name}.")}

    return Settings(
        debug=values["debug"], secret_key=values["secret_key"], allowed_hosts=tuple(values["allowed_hosts"]),
        database_url=values["database_url"], database_pool_max_size=values["database_pool_max_size"],
        database_wait_timeout=values["database_wait_timeout"],
        database=database_config(values["database_url"], pool_max_size=values["database_pool_max_size"],
                                 wait_timeout=values["database_wait_timeout"],
                                 base_dir=fields_without_key.pop("base_dir")),
        log_level=values["log_level"], log_format=values["log_format"], time_zone=values["time_zone"],
        server=ServerSettings(**section("gunicorn") | {
            "forwarded_allow_ips": tuple(values["gunicorn.forwarded_allow_ips"])}),
        provider=ProviderSettings(**section("provider") | {
            "secrets": dict(values["provider.secrets"]),
            "notification_addresses": tuple(values["provider.notification_addresses"])}),
        security=SecuritySettings(**section("security")), public_base_url=values["public_base_url"],
        database_allow_sqlite=values["database_allow_sqlite"], order_expiry_minutes=values["orders.expiry_minutes"],
        order_reconcile_after_minutes=values["orders.reconcile_after_minutes"],
        order_hold_max_minutes=values["orders.hold_max_minutes"], order_retention_days=values["orders.retention_days"],
        order_provider_recheck_seconds=values["orders.provider_recheck_seconds"],
        order_status_provider_budget_seconds=values["orders.status_provider_budget_seconds"],
        order_reconcile_list_hours=values["orders.reconcile_list_hours"],
        order_make_window_seconds=values["orders.make_window_seconds"],
        order_make_timeout_seconds=values["orders.make_timeout_seconds"],
        device_offline_after_seconds=values["devices.offline_after_seconds"],
        order_contact_retention_days=values["orders.contact_retention_days"],
        **fields_without_key,
    )


# What a customer's request may wait for the provider, against its deadline.
PROVIDER_WAIT_KEYS = ("provider.connect_timeout", "provider.read_timeout", "provider.retries",
                      "orders.status_provider_budget_seconds", "gunicorn.timeout")


def provider_wait_longest(*, connect: float, read: float, retries: int) -> float:
    """Seconds a provider call with its retries may take at most: every attempt's connect and read
    timeouts and the back-off between attempts."""
    return (1 + retries) * (connect + read) + PROVIDER_RETRY_BACKOFF * retries * (retries + 1) / 2


def provider_wait_refusal(values: Mapping[str, Any]) -> str | None:
    """Why these provider timeouts, retries and status-poll budget (by variable) cannot fit in
    GUNICORN_TIMEOUT with the request's margin, or None when they fit."""
    connect, read = values["PAYMENT_PROVIDER_CONNECT_TIMEOUT"], values["PAYMENT_PROVIDER_READ_TIMEOUT"]
    retries, timeout = values["PAYMENT_PROVIDER_RETRIES"], values["GUNICORN_TIMEOUT"]
    budget = values["ORDER_STATUS_PROVIDER_BUDGET_SECONDS"]
    usable = timeout - PROVIDER_DEADLINE_MARGIN
    longest = provider_wait_longest(connect=connect, read=read, retries=retries)
    if longest > usable:
        return (f"PAYMENT_PROVIDER_CONNECT_TIMEOUT={connect:g}, PAYMENT_PROVIDER_READ_TIMEOUT={read:g} and "
                f"PAYMENT_PROVIDER_RETRIES={retries} let a provider call wait {longest:g} s, which does not fit in "
                f"GUNICORN_TIMEOUT={timeout} (allowed: (1 + retries) x (connect + read timeout) + "
                f"{PROVIDER_RETRY_BACKOFF:g} s x n before retry n, at most GUNICORN_TIMEOUT - "
                f"{PROVIDER_DEADLINE_MARGIN:g} s = {usable:g} s)")
    if budget > usable:
        return (f"ORDER_STATUS_PROVIDER_BUDGET_SECONDS={budget:g} does not fit in GUNICORN_TIMEOUT={timeout} "
                f"(allowed: at most GUNICORN_TIMEOUT - {PROVIDER_DEADLINE_MARGIN:g} s = {usable:g} s)")
    return None


# settings.toml's default, for a settings file that has none.
DEFAULT_METRICS_DIR = "/dev/shm/coffee-payment-metrics"
NOT_A_DIRECTORY = "is not an absolute directory path (allowed: /path/to/dir, not / itself)"


def parse_directory(value: Any) -> Any:
    return value.strip().rstrip("/") or "/" if isinstance(value, str) else value


def is_directory(value: Any) -> bool:
    """An absolute directory path other than / (the server creates it and empties it of metrics)."""
    return is_text(value) and value.startswith("/") and value != "/" and "\x00" not in value


# Casts (Validator `cast=`): the typed value, or the value unchanged for the condition to refuse.
def parse_whole_number(value: Any) -> Any:
    return int(value) if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value.strip()) else value


def parse_seconds(value: Any) -> Any:
    # Plain decimals only: TOML-style parsing would take "1e3", "inf" or "nan" as a number.
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()) or type(value) is int:
        return float(value)
    return value


def parse_boolean(value: Any) -> Any:
    return _BOOLEANS.get(value.strip().lower(), value) if isinstance(value, str) else value


def parse_text(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def parse_hosts(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(host.strip() for host in value.split(",") if host.strip())
    return tuple(value) if isinstance(value, list) and all(isinstance(h, str) and h for h in value) else value


def parse_base_url(value: Any) -> Any:
    # Paths are joined as base + "/payments": a trailing slash would double it.
    return value.strip().rstrip("/") if isinstance(value, str) else value


def parse_provider_secrets(value: Any) -> Any:
    """`shop_id:secret,shop_id:secret` as a dict; a Refusal never shows a secret."""
    if isinstance(value, Mapping):
        return value
    secrets_by_shop: dict[str, str] = {}
    for number, entry in enumerate((e.strip() for e in value.split(",") if e.strip()), start=1):
        shop, colon, secret = (part.strip() for part in entry.partition(":"))
        # Nothing of a malformed entry is shown: "secret" alone or "secret:" may be a secret.
        if not colon or not _SHOP_ID.fullmatch(shop) or not secret:
            return Refusal(f"entry {number} is not shop_id:secret (value not shown) (allowed: comma-separated "
                           "shop_id:secret, shop id of letters, digits, - and _)")
        if shop in secrets_by_shop:
            return Refusal(f"entry {number} repeats shop {shop!r} (allowed: each shop once)")
        secrets_by_shop[shop] = secret
    return secrets_by_shop


def parse_networks(value: Any) -> Any:
    """Comma-separated IP addresses and CIDR networks (Gunicorn's and uvicorn's forms) as a tuple of
    strings; a Refusal naming the first entry that is neither. `*` (trust anyone) is refused too."""
    if isinstance(value, str):
        value = [entry.strip() for entry in value.split(",") if entry.strip()]
    if not isinstance(value, (list, tuple)):
        return value
    for entry in value:
        try:
            if not isinstance(entry, str):  # a TOML number would pass for an address (5: 0.0.0.5)
                raise ValueError(f"{entry!r} is not text")
            # strict: 10.244.0.1/16 (host bits set) is a mistake for 10.244.0.0/16, as Gunicorn says.
            ipaddress.ip_network(entry, strict=True)
        except (TypeError, ValueError) as error:
            return Refusal(f"entry {str(entry)[:80]!r} is not an IP address or CIDR network: {error} (allowed: "
                           "comma-separated addresses and networks, e.g. 10.244.0.0/16,127.0.0.1)")
    return tuple(value)


def is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def is_base_url(value: Any, *, path: bool = True) -> bool:
    try:
        parts = urllib.parse.urlsplit(value)
    except (TypeError, ValueError):
        return False
    return bool(parts.scheme in ("http", "https") and parts.hostname and parts.username is None
                and not parts.query and not parts.fragment and (path or not parts.path.strip("/")))


def hosts_with_base_url(hosts: tuple[str, ...], base_url: str) -> tuple[str, ...]:
    """`hosts` and the host of `base_url`, as Django's ALLOWED_HOSTS writes it ("[::1]" for IPv6)."""
    host = urllib.parse.urlsplit(base_url).hostname or ""
    host = f"[{host}]" if ":" in host else host
    return hosts if not host or host in hosts else (*hosts, host)


def database_engine(url: Any) -> str | None:
    try:
        return dj_database_url.parse(url).get("ENGINE")
    except Exception:  # dj-database-url raises several types for a malformed URL
        return None


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


# What a message or the report shows of a value: secrets nothing (None), URLs masked.
SHOWN: dict[str, Callable[[str], str] | None] = {"secret_key": None, "provider.secrets": None,
                                                 "database_url": mask_database_url, "provider.url": mask_url}


def shown_value(key: str, value: Any) -> str:
    if key == "provider.secrets":
        return ",".join(f"{shop}:{SECRET_MASK}" for shop in value) or "-"
    if key in SHOWN:
        return SECRET_MASK if SHOWN[key] is None else SHOWN[key](str(value))  # type: ignore[misc]
    return (",".join(value) or "-") if isinstance(value, (list, tuple)) else str(value)


def database_config(url: str, *, pool_max_size: int, wait_timeout: float, base_dir: Path) -> dict[str, Any]:
    """Django's DATABASES entry for a URL `database_engine` accepted."""
    config: dict[str, Any] = dict(dj_database_url.parse(url))
    if config["ENGINE"] == SQLITE:
        if config["NAME"] != ":memory:" and not Path(config["NAME"]).is_absolute():
            # Relative SQLite paths are relative to the project, not to wherever the server starts.
            config["NAME"] = str(base_dir / config["NAME"])
        # Options in the URL (?timeout=5) win over these.
        config["OPTIONS"] = {**SQLITE_OPTIONS, "timeout": wait_timeout, **config.get("OPTIONS", {})}
    # PostgreSQL: Django's pool below requires 0. SQLite has no pool, and opening a connection
    # (with its PRAGMAs) cost more than half of a status poll; the project's handler runs each
    # request in a long-lived pooled thread of its own (coffee_payment/request_threads.py), so a
    # thread's connection is kept between its requests, one request at a time, and Django's
    # request signals close it when it breaks or is ten minutes old.
    config["CONN_MAX_AGE"] = 0 if config["ENGINE"] == POSTGRESQL else SQLITE_CONN_MAX_AGE
    if config["ENGINE"] == POSTGRESQL:
        # A psycopg pool gives those threads warm connections instead; one pool per worker process,
        # opened on first use (after the fork, never in the Gunicorn master). Its pool tests each
        # connection as it leaves the pool and replaces a dead one, so a PostgreSQL restart fails no
        # request on a connection it killed, and no request waits longer than `wait_timeout`.
        config["ENGINE"] = POSTGRESQL_POOLED
        pool = {"min_size": 1, "max_size": pool_max_size, "timeout": wait_timeout,
                "reconnect_timeout": DATABASE_RECONNECT_TIMEOUT}
        options = config.get("OPTIONS", {})
        # A row lock (select_for_update, an UPDATE of a row another transaction holds) is waited for
        # as long, then fails with LockNotAvailable: 503, never a request hung until its 504.
        server_options = " ".join((*filter(None, [options.get("options")]),
                                   f"-c lock_timeout={round(wait_timeout * 1000)}"))
        config["OPTIONS"] = {**options, "connect_timeout": DATABASE_CONNECT_TIMEOUT, "options": server_options,
                             "pool": pool}
    return config


def unknown_variable_warnings(
    environ: Mapping[str, str], *, prefix: str, known: Collection[str], ignored: Collection[str]
) -> tuple[str, ...]:
    """A warning for each `prefix` variable that is no setting, naming the closest that is: a typo."""
    ours = [name for name in known if name.startswith(prefix)]
    warnings = []
    for name in sorted(environ):
        if name.startswith(prefix) and name not in known and name not in ignored:
            close = difflib.get_close_matches(name, ours, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(ours)}"
            warnings.append(f"{name} is not a setting of this server and is ignored; {hint}")
    return tuple(warnings)
