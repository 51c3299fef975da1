"""The one place that reads the environment and config/settings.toml, and validates both.

Dynaconf merges the TOML layers ([default] < [<DJANGO_ENV>]), takes VARIABLES over them, checks
everything with its Validators (all failures in one message) and keeps each value's history: one
typed `Settings` object, which Django's settings and config/gunicorn.py only read.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from django.core.checks.security.base import _check_secret_key as django_secret_key_is_strong
from dynaconf import Dynaconf, ValidationError, Validator
from dynaconf.loaders.base import SourceMetadata
from dynaconf.utils.inspect import get_history

from coffee_payment.conf_values import (
    DATABASE_URL_FORMS, DATABASE_WAIT_TIMEOUT, DEFAULT_METRICS_DIR, DERIVED_WHEN_UNSET, DEVELOPMENT_BASE_URL,
    KILL_MARGIN, NOT_A_DIRECTORY, PROVIDER_WAIT_KEYS, SHOWN, SQLITE, WEAK_KEY, ConfigError, IntSetting, Refusal,
    SecondsSetting, Settings, database_engine, hosts_with_base_url, is_base_url, is_directory, is_text, parse_base_url,
    parse_boolean, parse_directory, parse_hosts, parse_networks, parse_provider_secrets, parse_text,
    parse_whole_number, provider_wait_refusal, settings_from, shown_value, unknown_variable_warnings,
)

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
log = logging.getLogger(__name__)


# The server's whole numbers. workers: 64 is far past what one pod should run; timeouts: an hour.
# Hostile clients (docs/architecture.md, "Request limits"): headers of what browsers send with cookies up to
# 1 MiB; a body of 1 KiB (a webhook is a few hundred bytes) to 64 MiB (in memory, never spooled). Connections:
# uvicorn counts the request's own, so 10 serves nine at once; 100000 is past any file limit's sense.
SERVER_INT_SETTINGS = tuple(IntSetting(f"gunicorn.{key}", f"GUNICORN_{key.upper()}", low, high) for key, low, high in (
    ("workers", 1, 64), ("port", 1, 65535), ("timeout", 1, 3600), ("graceful_timeout", 1, 3600),
    ("max_requests", 0, 10_000_000), ("max_requests_jitter", 0, 10_000_000), ("keepalive", 1, 300),
    ("max_header_bytes", 4096, 1_048_576), ("header_timeout", 1, 300), ("max_body_bytes", 1024, 67_108_864),
    ("metrics_port", 0, 65535), ("worker_connections", 10, 100_000),
))
# Retries repeat a provider call with the same Idempotence-Key: more only lengthen the customer's
# wait. Pool: per worker process. Hold: the provider keeps a held amount 7 days at most (YooKassa),
# so it is released well before. HSTS: two years is the longest browsers' preload lists ask for.
# The vend window: long enough for a machine's poll to see the payment, at most an hour; a drink
# takes minutes, so a started one is overdue after at least one, at most a day. A machine silent
# for 10 s is noise, for a day it is long gone.
OTHER_NUMBER_SETTINGS = (
    SecondsSetting("provider.connect_timeout", "PAYMENT_PROVIDER_CONNECT_TIMEOUT", 0.1, 30),
    SecondsSetting("provider.read_timeout", "PAYMENT_PROVIDER_READ_TIMEOUT", 0.1, 60),
    IntSetting("provider.retries", "PAYMENT_PROVIDER_RETRIES", 0, 5),
    # Forged notifications: a payment read for a notification is not read again for the same
    # claim within this many seconds; reads of ids no order holds, per minute and worker.
    IntSetting("provider.reread_seconds", "PAYMENT_PROVIDER_REREAD_SECONDS", 1, 300),
    IntSetting("provider.unknown_reads_per_minute", "PAYMENT_PROVIDER_UNKNOWN_READS_PER_MINUTE", 1, 10_000),
    IntSetting("orders.expiry_minutes", "ORDER_EXPIRY_MINUTES", 1, 1440),
    IntSetting("database_pool_max_size", "DATABASE_POOL_MAX_SIZE", 1, 100),
    SecondsSetting("database_wait_timeout", "DATABASE_WAIT_TIMEOUT", 0.5, 60),
    IntSetting("orders.reconcile_after_minutes", "ORDER_RECONCILE_AFTER_MINUTES", 1, 1440),
    IntSetting("orders.hold_max_minutes", "ORDER_HOLD_MAX_MINUTES", 1, 8640),
    IntSetting("orders.retention_days", "ORDER_RETENTION_DAYS", 1, 3650),
    # The status poll's own provider reads (docs/payments.md, "Money flows"): at most one per order
    # per recheck interval, each waited for at most the budget; reconciliation lists a day of payments.
    SecondsSetting("orders.provider_recheck_seconds", "ORDER_PROVIDER_RECHECK_SECONDS", 1, 300),
    SecondsSetting("orders.status_provider_budget_seconds", "ORDER_STATUS_PROVIDER_BUDGET_SECONDS", 0.1, 10),
    IntSetting("orders.reconcile_list_hours", "ORDER_RECONCILE_LIST_HOURS", 1, 720),
    IntSetting("orders.make_window_seconds", "ORDER_MAKE_WINDOW_SECONDS", 5, 3600),
    IntSetting("orders.make_timeout_seconds", "ORDER_MAKE_TIMEOUT_SECONDS", 60, 86400),
    IntSetting("devices.offline_after_seconds", "DEVICE_OFFLINE_AFTER_SECONDS", 10, 86400),
    IntSetting("orders.contact_retention_days", "ORDER_CONTACT_RETENTION_DAYS", 1, 3650),
    IntSetting("security.hsts_seconds", "DJANGO_SECURE_HSTS_SECONDS", 0, 63_072_000),
    IntSetting("security.admin_login_failure_limit", "DJANGO_ADMIN_LOGIN_FAILURE_LIMIT", 1, 100),
    IntSetting("security.admin_lockout_minutes", "DJANGO_ADMIN_LOCKOUT_MINUTES", 1, 10080),
)
# Waits inside a request that must end before the request's own deadline, so that the customer gets
# a page (503) rather than the bare 504: (the wait, the deadline, why).
BELOW_REQUEST_TIMEOUT = (
    ("database_wait_timeout", "gunicorn.timeout", "a request waiting for the database must get its 503 page first"),
)
BOOLEANS = ("debug", "database_allow_sqlite", "security.ssl_redirect", "security.hsts_include_subdomains",
            "security.hsts_preload")
# Every variable this module reads, mapped to its dotted settings key.
VARIABLES: dict[str, str] = {
    "DJANGO_SECRET_KEY": "secret_key", "DJANGO_DEBUG": "debug", "DJANGO_ALLOWED_HOSTS": "allowed_hosts",
    "DJANGO_LOG_LEVEL": "log_level", "DJANGO_LOG_FORMAT": "log_format", "DATABASE_URL": "database_url",
    "DATABASE_ALLOW_SQLITE": "database_allow_sqlite", "DJANGO_PUBLIC_BASE_URL": "public_base_url",
    "GUNICORN_HOST": "gunicorn.host", "GUNICORN_METRICS_DIR": "gunicorn.metrics_dir",
    "GUNICORN_FORWARDED_ALLOW_IPS": "gunicorn.forwarded_allow_ips",
    "PAYMENT_PROVIDER_URL": "provider.url", "PAYMENT_PROVIDER_SECRETS": "provider.secrets",
    "PAYMENT_PROVIDER_NOTIFICATION_ADDRESSES": "provider.notification_addresses",
    "DJANGO_SECURE_SSL_REDIRECT": "security.ssl_redirect",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "security.hsts_include_subdomains",
    "DJANGO_SECURE_HSTS_PRELOAD": "security.hsts_preload",
    **{s.variable: s.key for s in (*SERVER_INT_SETTINGS, *OTHER_NUMBER_SETTINGS)},
}
KEY_VARIABLES = {key: variable for variable, key in VARIABLES.items()}


def _validators(layer: str, *, required: str, lookup: Callable[[str], Any]) -> list[Validator]:
    """Every check, in the order their failures are reported; `lookup` reads another key's value."""
    production = layer == "production"

    def check(key: str, cast: Callable[[Any], Any], condition: Callable[[Any], bool], message: str, **more: Any
              ) -> Validator:
        messages = {"condition": message, "must_exist_true": required}
        return Validator(key, cast=cast, condition=condition, messages=messages, **more)

    needed: dict[str, Any] = {"must_exist": True} if production else {}
    checks = [
        # A fresh key per start outside production: nothing signed there needs to outlive the server.
        check("secret_key", parse_text, is_text, "is not a non-empty string",
              **(needed or {"default": lambda *_: secrets.token_urlsafe(50)})),
        check("allowed_hosts", parse_hosts, lambda v: isinstance(v, tuple), "is not a list of host names "
              "(allowed: comma-separated names)", **(needed or {"default": ()})),
        check("database_url", parse_text, lambda v: database_engine(v) in (SQLITE, "django.db.backends.postgresql"),
              f"is not a database URL (allowed: {DATABASE_URL_FORMS})", must_exist=True),
        # Not the request's Host: every attempt under an order's Idempotence-Key sends the same body.
        check("public_base_url", parse_base_url, lambda v: is_base_url(v, path=False), "is not a base URL (allowed: "
              "http(s)://host[:port], no path, no user, query or fragment)",
              **(needed or {"default": DEVELOPMENT_BASE_URL})),
        *(check(key, parse_boolean, lambda v: type(v) is bool,
                "is not a boolean (allowed: true/false, 1/0, yes/no, on/off)",
                **({"default": False} if key in ("debug", "database_allow_sqlite") else {"must_exist": True}))
          for key in BOOLEANS),
        *(check(key, lambda v, n=normal: n(v.strip()) if isinstance(v, str) else v,
                lambda v, allowed=allowed: v in allowed, f"is not one of {', '.join(allowed)}", default=default)
          for key, normal, allowed, default in (("log_level", str.upper, LOG_LEVELS, "INFO"),
                                                ("log_format", str.lower, LOG_FORMATS, "json"))),
        check("time_zone", parse_text, is_text, "is not a non-empty string", default="UTC"),
        check("gunicorn.host", parse_text, is_text, "is not a non-empty string", must_exist=True),
        check("gunicorn.metrics_dir", parse_directory, is_directory, NOT_A_DIRECTORY, default=DEFAULT_METRICS_DIR),
        # Empty: no peer is a trusted proxy, so no client chooses its own address or scheme.
        check("gunicorn.forwarded_allow_ips", parse_networks, lambda v: not isinstance(v, Refusal), "{value}",
              default=()),
        check("provider.url", parse_base_url, is_base_url, "is not a base URL "
              "(allowed: http(s)://host[:port]/path, no user, query or fragment)", must_exist=True),
        check("provider.secrets", parse_provider_secrets, lambda v: not isinstance(v, Refusal), "{value}", default={}),
        # Empty: notifications from any address (their bodies are never trusted anyway).
        check("provider.notification_addresses", parse_networks, lambda v: not isinstance(v, Refusal), "{value}",
              default=()),
        *(v for s in (*SERVER_INT_SETTINGS, *OTHER_NUMBER_SETTINGS) for v in s.validators(required=required)),
        # After both ports' own checks: one listener cannot serve both.
        Validator("gunicorn.metrics_port", condition=lambda v: v == 0 or v != parse_whole_number(lookup("gunicorn.port")),
                  when=Validator("gunicorn.metrics_port", condition=lambda v: type(v) is int),
                  messages={"condition": "is also GUNICORN_PORT (allowed: another port, or 0 for none)"}),
    ]
    if production:
        checks[1:1] = [Validator("secret_key", condition=django_secret_key_is_strong, messages={"condition": WEAK_KEY})]
        checks += [
            check("allowed_hosts", parse_hosts, bool, "is required in the production layer and lists no host"),
            check("debug", parse_boolean, lambda v: v is not True,
                  "is refused in the production layer (DEBUG leaks internals)"),
            # One file, one writer at a time, no sharing between pods: fine for one replica, not a fleet.
            check("database_url", parse_text, lambda v: database_engine(v) != SQLITE, "is SQLite, refused in the "
                  "production layer (use PostgreSQL, or set DATABASE_ALLOW_SQLITE=true for a single replica)",
                  when=Validator("database_allow_sqlite", eq=False)),
        ]
    return checks


def _relation_failures(conf: Dynaconf, origins: Mapping[str, Any], file_name: str) -> list[str]:
    """Values valid alone that cannot work together, each naming both culprits."""
    failures = [f"{_where(origins[below], below, file_name)} is not below {_named(conf, origins, above, file_name)} "
                f"({why})" for below, above, why in BELOW_REQUEST_TIMEOUT
                if conf.get(below) is not None and conf.get(below) >= conf.get(above)]
    if refusal := provider_wait_refusal({KEY_VARIABLES[key]: conf.get(key) for key in PROVIDER_WAIT_KEYS}):
        failures.append(refusal)
    window, hold_minutes = conf.orders.make_window_seconds, conf.orders.hold_max_minutes
    if window >= hold_minutes * 60:
        shown = _where(origins["orders.make_window_seconds"], "orders.make_window_seconds", file_name)
        held = _where(origins["orders.hold_max_minutes"], "orders.hold_max_minutes", file_name)
        failures.append(f"{shown} is not shorter than {held} ({hold_minutes * 60} seconds) (allowed: less, so that "
                        "a held amount is still held when its vend window closes)")
    return failures


def _origins(conf: Dynaconf) -> dict[str, dict[str, Any] | None]:
    """Per key, the history entry (TOML layer or variable) that gave its value; None for a default."""
    origins: dict[str, dict[str, Any] | None] = dict.fromkeys(("time_zone", *KEY_VARIABLES))
    for entry in get_history(conf):
        for key, before in origins.items():
            if (value := _lookup(entry["value"], key)) is None:
                continue
            if entry["loader"] == "env" and entry["identifier"] == KEY_VARIABLES[key]:
                origins[key] = entry | {"value": value}
            # A layer's table is merged whole into the one before: it counts where it changed the value.
            elif entry["loader"] == "toml" and entry["env"] in ("default", conf.current_env.lower()) and (
                before is None or not entry["merged"] or value != before["value"]
            ):
                origins[key] = entry | {"value": value}
    return origins


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):  # Dynaconf keeps top-level keys upper-case
        data = next((v for k, v in data.items() if k.lower() == part), None) if isinstance(data, Mapping) else None
    return data


def _where(origin: dict[str, Any] | None, key: str, file_name: str) -> str:
    """The culprit as an operator finds it: `VARIABLE='value'` or `settings.toml [layer] key=value`."""
    if origin is None:
        return KEY_VARIABLES[key]
    head = KEY_VARIABLES[key] if origin["loader"] == "env" else f"{file_name} [{origin['env']}] {key}"
    if key not in SHOWN:
        return f"{head}={origin['value']!r}"
    return head if SHOWN[key] is None else f"{head}={SHOWN[key](str(origin['value']))!r}"  # type: ignore[misc]


def _named(conf: Dynaconf, origins: Mapping[str, Any], key: str, file_name: str) -> str:
    """`_where`, with the value also for one that no layer or variable set."""
    where = _where(origins[key], key, file_name)
    return where if origins[key] is not None else f"{where}={conf.get(key)!r} (built-in)"


def _source(origin: dict[str, Any] | None, key: str) -> str:
    if origin is None:
        return {"secret_key": "generated at start", "provider.secrets": "not set", **DERIVED_WHEN_UNSET}.get(
            key, "built-in")
    return f"env {origin['identifier']}" if origin["loader"] == "env" else f"[{origin['env']}]"


@functools.lru_cache(maxsize=8)
def _layers(settings_file: Path, layer: str, version: int) -> Dynaconf:
    """The file's merged layers, read once per file version; every load works on a copy."""
    # No loader of Dynaconf's own reads the environment (they would read os.environ, not `environ`,
    # and take "0x1F" or "1_000" for numbers); auto_cast off: "@format ..." in a value stays text.
    conf = Dynaconf(settings_files=[str(settings_file)], environments=True, env=layer, loaders=[], load_dotenv=False,
                    merge_enabled=True, auto_cast=False)
    try:
        if conf.current_env.lower() != layer:  # ENV_FOR_DYNACONF in os.environ wins over env=
            conf.setenv(layer)
    except ValueError as exc:  # TOMLDecodeError
        raise ConfigError(f"cannot read {settings_file}: {exc}") from None
    return conf


def load_settings(*, environ: Mapping[str, str], settings_file: Path = SETTINGS_FILE) -> Settings:
    """Resolve and validate every setting; raise ConfigError naming every bad or missing one."""
    layer = environ.get(LAYER_VARIABLE, "").strip() or DEFAULT_LAYER
    if layer not in LAYERS:
        raise ConfigError(f"{LAYER_VARIABLE}={layer!r} is not a settings layer (allowed: {', '.join(LAYERS)})")
    try:
        version = settings_file.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"cannot read {settings_file}: {exc}") from None
    conf = _layers(settings_file, layer, version).dynaconf_clone()
    if conf.get("provider.secrets") is not None:  # in settings.toml, it would be in every clone
        raise ConfigError(f"{_where(_origins(conf)['provider.secrets'], 'provider.secrets', settings_file.name)} is "
                          "refused: provider secrets come from PAYMENT_PROVIDER_SECRETS only")
    for variable, key in VARIABLES.items():
        # Compose files and Helm charts render unset values as empty strings: unset.
        if value := environ.get(variable, "").strip():
            conf.set(key, value, loader_identifier=SourceMetadata("env", variable))
    origins = _origins(conf)
    layer_row = ("layer", layer, f"env {LAYER_VARIABLE}" if environ.get(LAYER_VARIABLE, "").strip() else "built-in")
    required = f"is required in the {layer} layer and is not set"
    conf.validators.register(*_validators(layer, required=required, lookup=conf.get))
    try:
        conf.validators.validate_all()
    except ValidationError as failed:
        errors = [(validator.names[0], message) for validator, message in failed.details]
        missing = {key for key, message in errors if message == required}
        # Only required variables missing: the report can still be shown, each of them marked.
        complete = len(missing) == len(errors)
        rows = [layer_row, *_rows(conf, origins, missing=missing, required=required)] if complete else None
        message = "; ".join(f"{_where(origins[key], key, settings_file.name)} {text}" for key, text in errors)
        raise ConfigError(message, rows=rows) from None
    if failures := _relation_failures(conf, origins, settings_file.name):
        raise ConfigError("; ".join(failures))
    if conf.get("gunicorn.graceful_timeout") is None:
        # The drain after SIGTERM gets as long as a request may take, unless told otherwise.
        conf.set("gunicorn.graceful_timeout", conf.gunicorn.timeout, loader_identifier="validator")
    if conf.get("database_wait_timeout") is None:
        conf.set("database_wait_timeout", min(DATABASE_WAIT_TIMEOUT, conf.gunicorn.timeout / 2),
                 loader_identifier="validator")
    values = {key: conf.get(key) for key in origins}
    graceful = values["gunicorn.graceful_timeout"]
    # --print-config shows Gunicorn's own graceful_timeout, the margin added: say so where both are read.
    rows = [(key, value, f"{source}; Gunicorn's graceful_timeout {graceful + KILL_MARGIN} (SIGKILL {KILL_MARGIN} s "
             "after this drain)") if key == "gunicorn.graceful_timeout" else (key, value, source)
            for key, value, source in [layer_row, *_rows(conf, origins)]]
    if layer == "development":
        # `make run BASE_URL=http://192.168.1.20:8000`: a phone on the network opens the links there.
        hosts = hosts_with_base_url(values["allowed_hosts"], values["public_base_url"])
        if hosts != values["allowed_hosts"]:
            values["allowed_hosts"] = hosts
            rows = [(key, ",".join(hosts), f"{source} + the host of public_base_url") if key == "allowed_hosts"
                    else (key, value, source) for key, value, source in rows]
    warnings = unknown_variable_warnings(environ, prefix="GUNICORN_", known=VARIABLES, ignored=GUNICORN_OWN_VARIABLES)
    return settings_from(values, layer=layer, base_dir=BASE_DIR, rows=rows,
                         sources={key: source for key, _, source in rows}, warnings=warnings)


def _rows(conf: Dynaconf, origins: Mapping[str, Any], *, missing: Collection[str] = (), required: str = ""
          ) -> list[tuple[str, str, str]]:
    """The report: (key, value shown to an operator, source); a missing required value is marked."""
    return [(key, "MISSING", f"{KEY_VARIABLES[key]} {required}") if key in missing
            else (key, shown_value(key, conf.get(key)), _source(origins[key], key)) for key in origins]


@functools.cache
def process_settings() -> Settings:
    """This process's settings, loaded once; forked Gunicorn workers inherit the master's."""
    loaded = load_settings(environ=os.environ)
    for warning in loaded.warnings:
        log.warning(warning)
    return loaded


def __getattr__(name: str) -> Any:
    if name == "settings":  # loaded on first use: the rest of the module imports when it cannot load
        return process_settings()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
