"""What coffee_payment.conf hands out and the value work behind it: the typed settings objects, the
casts its Validators apply, masks for what an operator may see, and Django's database entry for a
validated URL. No environment is read here."""

from __future__ import annotations

import difflib
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from dynaconf import Validator


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


def secret_key_is_strong(key: Any) -> bool:
    """Django's security.W009 rule (`check --deploy`), whose own function is private."""
    return (isinstance(key, str) and len(key) >= SECRET_KEY_MIN_LENGTH
            and len(set(key)) >= SECRET_KEY_MIN_UNIQUE_CHARACTERS and not key.startswith(SECRET_KEY_INSECURE_PREFIX))


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
class Kind:
    """A setting's type: the cast its Validator applies, what a cast value must be, the refusal otherwise,
    and for numbers the range (low..high)."""

    type: Any
    parse: Callable[[Any], Any]
    accepts: Callable[[Any], bool]
    refusal: str  # "{value}": the cast's Refusal is the message
    low: float | None = None
    high: float | None = None
    unit: str = ""
    choices: tuple[str, ...] = ()

    @property
    def allowed(self) -> str | None:
        return None if self.low is None else f"{self.low}..{self.high}{self.unit}"

    def validators(self, key: str, *, required: str, **existence: Any) -> list[Validator]:
        """The value's type, then its range: a range is checked only on a value of the type."""
        checks = [Validator(key, cast=self.parse, condition=self.accepts,
                            messages={"condition": self.refusal, "must_exist_true": required}, **existence)]
        if self.low is not None:
            checks.append(Validator(key, gte=self.low, lte=self.high, when=Validator(key, condition=self.accepts),
                                    messages={"operations": f"is out of range (allowed: {self.allowed})"}))
        return checks


def whole_number(low: int, high: int) -> Kind:
    # bool is an int to Python, and a TOML `true` would pass isinstance: refuse it.
    return Kind(int, parse_whole_number, lambda v: type(v) is int, f"is not a whole number (allowed: {low}..{high})",
                low, high)


def seconds(low: float, high: float) -> Kind:
    """A plain decimal number of seconds: "1e3", "inf" and "nan" are not."""
    return Kind(float, parse_seconds, lambda v: type(v) is float,
                f"is not a number of seconds (allowed: {low}..{high} seconds)", low, high, " seconds")


def one_of(*allowed: str, normal: Callable[[str], str]) -> Kind:
    return Kind(str, lambda v: normal(v.strip()) if isinstance(v, str) else v, lambda v: v in allowed,
                f"is not one of {', '.join(allowed)}", choices=allowed)


def not_refused(value: Any) -> bool:
    return not isinstance(value, Refusal)


class ServerMethods:
    host: str
    port: int

    @property
    def bind(self) -> str:
        return self.bind_port(self.port)

    def bind_port(self, port: int) -> str:
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"


class SettingsMethods:
    device_offline_after_seconds: int
    order_make_window_seconds: int
    rows: list[tuple[str, str, str]]

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


# A dotted key's section -> the Settings attribute holding it (a typed object of its own), or the
# prefix of the flat attribute (orders.expiry_minutes: order_expiry_minutes).
SECTIONS = {"gunicorn": "server", "provider": "provider", "security": "security"}
FLAT_PREFIXES = {"orders": "order_", "devices": "device_"}
SECTION_METHODS: dict[str, type] = {"server": ServerMethods}
# Settings fields no declaration gives: (name, type, shown in repr).
LOADER_FIELDS = (("layer", str, True), ("database", dict[str, Any], False), ("sources", Mapping[str, str], True),
                 ("warnings", tuple[str, ...], True), ("rows", list[tuple[str, str, str]], False))


def attribute_of(key: str) -> tuple[str | None, str]:
    """(the section attribute or None, the field) where Settings holds the setting under `key`."""
    section, dot, name = key.rpartition(".")
    if section in SECTIONS:
        return SECTIONS[section], name
    return None, FLAT_PREFIXES.get(section, "") + name if dot else key


def settings_types(declared: Collection[Any]) -> dict[str | None, type]:
    """The typed, frozen settings objects, one field per declaration (a secret one out of repr):
    None -> Settings, and each section's own (Settings.server...)."""
    fields_of: dict[str | None, list[tuple[str, Any, Any]]] = {None: [], **{s: [] for s in SECTIONS.values()}}
    for setting in declared:
        section, name = attribute_of(setting.key)
        fields_of[section].append((name, setting.kind.type, field(repr=not setting.secret)))
    types: dict[str | None, type] = {
        section: make_dataclass(f"{section.title()}Settings", fields_of[section], frozen=True,
                                bases=(SECTION_METHODS.get(section, object),))
        for section in SECTIONS.values()
    }
    top = [*fields_of[None], *((name, types[name], field()) for name in SECTIONS.values()),
           *((name, kind, field(repr=shown)) for name, kind, shown in LOADER_FIELDS)]
    return {None: make_dataclass("Settings", top, frozen=True, bases=(SettingsMethods,)), **types}


def settings_from(values: Mapping[str, Any], types: Mapping[str | None, type], **fields_without_key: Any) -> Any:
    """A Settings from validated values by dotted key."""
    by_section: dict[str | None, dict[str, Any]] = {None: {}, **{s: {} for s in SECTIONS.values()}}
    for key, value in values.items():
        section, name = attribute_of(key)
        # TOML lists and tables arrive as lists and Dynaconf's boxes: frozen, plain types.
        by_section[section][name] = tuple(value) if isinstance(value, list) else (
            dict(value) if isinstance(value, Mapping) else value)
    top = by_section.pop(None)
    top["database"] = database_config(top["database_url"], pool_max_size=top["database_pool_max_size"],
                                      wait_timeout=top["database_wait_timeout"],
                                      base_dir=fields_without_key.pop("base_dir"))
    return types[None](**top, **{name: types[name](**fields) for name, fields in by_section.items()},
                       **fields_without_key)


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


def shown_value(value: Any, *, secret: bool | Callable[[str], str]) -> str:
    """What a message or the report shows of a value: a secret nothing (masked), a URL its mask."""
    if isinstance(value, Mapping):  # provider secrets: the shops, never their keys
        return ",".join(f"{shop}:{SECRET_MASK}" for shop in value) or "-"
    if secret:
        return SECRET_MASK if secret is True else secret(str(value))
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


BOOLEAN = Kind(bool, parse_boolean, lambda v: type(v) is bool,
               "is not a boolean (allowed: true/false, 1/0, yes/no, on/off)")
TEXT = Kind(str, parse_text, is_text, "is not a non-empty string")
HOSTS = Kind(tuple[str, ...], parse_hosts, lambda v: isinstance(v, tuple),
             "is not a list of host names (allowed: comma-separated names)")
DATABASE_URL = Kind(str, parse_text, lambda v: database_engine(v) in (SQLITE, POSTGRESQL),
                    f"is not a database URL (allowed: {DATABASE_URL_FORMS})")
SITE_URL = Kind(str, parse_base_url, lambda v: is_base_url(v, path=False),
                "is not a base URL (allowed: http(s)://host[:port], no path, no user, query or fragment)")
API_URL = Kind(str, parse_base_url, is_base_url,
               "is not a base URL (allowed: http(s)://host[:port]/path, no user, query or fragment)")
DIRECTORY = Kind(str, parse_directory, is_directory,
                 "is not an absolute directory path (allowed: /path/to/dir, not / itself)")
NETWORKS = Kind(tuple[str, ...], parse_networks, not_refused, "{value}")
PROVIDER_SECRETS = Kind(Mapping[str, str], parse_provider_secrets, not_refused, "{value}")
