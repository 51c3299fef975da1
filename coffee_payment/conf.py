"""The one place that reads the environment and config/settings.toml, and validates both.

Dynaconf merges the TOML layers ([default] < [<DJANGO_ENV>]) over the declared defaults
(conf_declarations), takes VARIABLES over them, checks everything with its Validators (all failures
in one message) and keeps each value's history: one typed `Settings` object, which Django's
settings and config/gunicorn.py only read.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf, ValidationError, Validator, get_history
from dynaconf.loaders.base import SourceMetadata

from coffee_payment.conf_declarations import (
    BY_KEY, DECLARED, DERIVED, LAYER, LAYER_VARIABLE, LAYERS, REQUIRED, SETTINGS_TYPES, VARIABLES, Settings,
)
from coffee_payment.conf_values import (
    DATABASE_WAIT_TIMEOUT, KILL_MARGIN, PROVIDER_WAIT_KEYS, SQLITE, WEAK_KEY, ConfigError, database_engine,
    hosts_with_base_url, parse_boolean, parse_hosts, parse_text, parse_whole_number, provider_wait_refusal,
    secret_key_is_strong, settings_from, shown_value, unknown_variable_warnings,
)

__all__ = ["LAYER_VARIABLE", "VARIABLES", "ConfigError", "Settings", "load_settings", "process_settings"]
BASE_DIR = Path(__file__).resolve().parent.parent
SETTINGS_FILE = BASE_DIR / "config" / "settings.toml"
# Gunicorn reads these itself; they are not ours to warn about.
GUNICORN_OWN_VARIABLES = frozenset({"GUNICORN_CMD_ARGS", "GUNICORN_PID", "GUNICORN_FD"})
log = logging.getLogger(__name__)
# Waits inside a request that must end before the request's own deadline, so that the customer gets
# a page (503) rather than the bare 504: (the wait, the deadline, why).
BELOW_REQUEST_TIMEOUT = (
    ("database_wait_timeout", "gunicorn.timeout", "a request waiting for the database must get its 503 page first"),
)
KEY_VARIABLES = {key: variable for variable, key in VARIABLES.items()}


def _validators(layer: str, *, required: str, lookup: Callable[[str], Any]) -> list[Validator]:
    """Every check, in the order their failures are reported; `lookup` reads another key's value."""
    production = layer == "production"

    def existence(setting: Any) -> dict[str, Any]:
        if setting.default is REQUIRED or production and setting.production_required:
            return {"must_exist": True}
        return {} if setting.default is DERIVED else {"default": setting.default}

    checks = [check for s in DECLARED for check in s.kind.validators(s.key, required=required, **existence(s))]
    # After both ports' own checks: one listener cannot serve both.
    checks.append(Validator(
        "gunicorn.metrics_port", condition=lambda v: v == 0 or v != parse_whole_number(lookup("gunicorn.port")),
        when=Validator("gunicorn.metrics_port", condition=lambda v: type(v) is int),
        messages={"condition": "is also GUNICORN_PORT (allowed: another port, or 0 for none)"}))
    if production:
        checks[1:1] = [Validator("secret_key", condition=secret_key_is_strong, messages={"condition": WEAK_KEY})]
        refused = [
            ("allowed_hosts", parse_hosts, bool, "is required in the production layer and lists no host", {}),
            ("debug", parse_boolean, lambda v: v is not True,
             "is refused in the production layer (DEBUG leaks internals)", {}),
            # One file, one writer at a time, no sharing between pods: fine for one replica, not a fleet.
            ("database_url", parse_text, lambda v: database_engine(v) != SQLITE, "is SQLite, refused in the "
             "production layer (use PostgreSQL, or set DATABASE_ALLOW_SQLITE=true for a single replica)",
             {"when": Validator("database_allow_sqlite", eq=False)}),
        ]
        checks += [Validator(key, cast=cast, condition=condition, messages={"condition": message}, **more)
                   for key, cast, condition, message, more in refused]
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
        shown = _named(conf, origins, "orders.make_window_seconds", file_name)
        held = _named(conf, origins, "orders.hold_max_minutes", file_name)
        failures.append(f"{shown} is not shorter than {held} ({hold_minutes * 60} seconds) (allowed: less, so that "
                        "a held amount is still held when its vend window closes)")
    return failures


def _origins(conf: Dynaconf) -> dict[str, dict[str, Any] | None]:
    """Per key, the history entry (TOML layer or variable) that gave its value; None for a default."""
    origins: dict[str, dict[str, Any] | None] = dict.fromkeys(BY_KEY)
    for entry in get_history(conf):
        for key, before in origins.items():
            if (value := _lookup(entry["value"], key)) is None:
                continue
            if entry["loader"] == "env" and entry["identifier"] == KEY_VARIABLES.get(key):
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
    variable, secret = BY_KEY[key].variable or key, BY_KEY[key].secret
    if origin is None:
        return variable
    head = variable if origin["loader"] == "env" else f"{file_name} [{origin['env']}] {key}"
    if not secret:
        return f"{head}={origin['value']!r}"
    return head if secret is True else f"{head}={secret(str(origin['value']))!r}"


def _named(conf: Dynaconf, origins: Mapping[str, Any], key: str, file_name: str) -> str:
    """`_where`, with the value also for one that no layer or variable set."""
    where = _where(origins[key], key, file_name)
    return where if origins[key] is not None else f"{where}={conf.get(key)!r} (built-in)"


def _source(origin: dict[str, Any] | None, key: str) -> str:
    if origin is None:
        return BY_KEY[key].unset_source
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
    # Not Dynaconf's env_switcher: it reads os.environ, not `environ`; an unknown layer there is
    # [default] alone and an empty one no layer (not production), both silently.
    layer = environ.get(LAYER_VARIABLE, "").strip() or LAYER.default
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
    return settings_from(values, SETTINGS_TYPES, layer=layer, base_dir=BASE_DIR, rows=rows,
                         sources={key: source for key, _, source in rows}, warnings=warnings)


def _rows(conf: Dynaconf, origins: Mapping[str, Any], *, missing: Collection[str] = (), required: str = ""
          ) -> list[tuple[str, str, str]]:
    """The report: (key, value shown to an operator, source); a missing required value is marked."""
    return [(key, "MISSING", f"{KEY_VARIABLES[key]} {required}") if key in missing
            else (key, shown_value(conf.get(key), secret=BY_KEY[key].secret), _source(origins[key], key))
            for key in origins]


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
