"""The settings loader: defaults, layers, environment overrides and refusal of bad values (R2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings as hypothesis_settings, strategies as st

from coffee_payment.conf import ConfigError, load_settings
from coffee_payment.conf_declarations import DECLARED
from coffee_payment.conf_values import secret_key_is_strong

FIVE = {
    "GUNICORN_WORKERS": ("workers", 4),
    "GUNICORN_PORT": ("port", 8000),
    "GUNICORN_TIMEOUT": ("timeout", 30),
    "GUNICORN_MAX_REQUESTS": ("max_requests", 0),
    "GUNICORN_MAX_REQUESTS_JITTER": ("max_requests_jitter", 0),
}
RULES = {s.variable: s.kind for s in DECLARED if s.key.startswith("gunicorn.") and s.kind.allowed}
TESTING = {"DJANGO_ENV": "testing"}
# Provider waits that fit in the shortest GUNICORN_TIMEOUT (1 s, less the request's 0.5 s margin).
QUICK_PROVIDER = {"PAYMENT_PROVIDER_CONNECT_TIMEOUT": "0.1", "PAYMENT_PROVIDER_READ_TIMEOUT": "0.1",
                  "PAYMENT_PROVIDER_RETRIES": "0", "ORDER_STATUS_PROVIDER_BUDGET_SECONDS": "0.1"}

# Every shape of not-a-plain-decimal-whole-number that TOML parsing or int() would let through.
MALFORMED = st.sampled_from(
    ["4.5", "1e3", "nan", "inf", "-inf", "true", "false", "[1]", "{}", "0x1F", "0o17", "0b11",
     "1_000", "four", "4 4", "4,5", '"4"', "١٢", "4.0", "+", "-"]
)


def padded(text: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    space = st.sampled_from(["", " ", "  ", "\t"])
    return st.tuples(space, text, space).map("".join)


def value_for(variable: str) -> st.SearchStrategy[tuple[str, str | None]]:
    """(kind, raw value or None for unset) for one variable."""
    rule = RULES[variable]
    valid = st.integers(rule.low, rule.high).map(str)
    out_of_range = st.one_of(st.integers(max_value=rule.low - 1), st.integers(min_value=rule.high + 1)).map(str)
    return st.one_of(
        st.just(("unset", None)),
        st.sampled_from(["", " ", "\t"]).map(lambda v: ("unset", v)),
        padded(valid).map(lambda v: ("valid", v)),
        padded(out_of_range).map(lambda v: ("invalid", v)),
        MALFORMED.map(lambda v: ("invalid", v)),
    )


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({variable: value_for(variable) for variable in FIVE}))
def test_r2_env_combinations_give_defaults_exact_ints_or_a_named_refusal(
    combination: dict[str, tuple[str, str | None]],
) -> None:
    """R2.1-R2.11: unset/empty -> defaults 4/8000/30/0/0; valid -> that int; invalid -> refusal naming it."""
    environ = {**TESTING, **QUICK_PROVIDER}
    environ.update({variable: raw for variable, (_, raw) in combination.items() if raw is not None})
    invalid = [variable for variable, (kind, _) in combination.items() if kind == "invalid"]

    if invalid:
        with pytest.raises(ConfigError) as refused:
            load_settings(environ=environ)
        message = str(refused.value)
        named = [variable for variable in invalid if message.startswith(f"{variable}=")]
        assert named, message
        assert repr(environ[named[0]].strip()) in message
        assert f"(allowed: {RULES[named[0]].allowed})" in message
        assert "\n" not in message
        return

    server = load_settings(environ=environ).server
    for variable, (key, default) in FIVE.items():
        kind, raw = combination[variable]
        expected = int(raw) if kind == "valid" else default
        value = getattr(server, key)
        assert type(value) is int
        assert value == expected, variable


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("true", "is not a whole number"),
        ("4.5", "is not a whole number"),
        ("1e3", "is not a whole number"),
        ("nan", "is not a whole number"),
        ("[1]", "is not a whole number"),
        ("0x1F", "is not a whole number"),
        ("0", "is out of range"),
        ("65", "is out of range"),
    ],
)
def test_r2_1_bad_workers_message_names_variable_value_and_range(raw: str, reason: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={**TESTING, "GUNICORN_WORKERS": raw})
    assert str(refused.value) == f"GUNICORN_WORKERS={raw!r} {reason} (allowed: 1..64)"


def test_r2_6_defaults_with_nothing_set() -> None:
    server = load_settings(environ=TESTING).server
    assert (server.workers, server.port, server.timeout, server.max_requests, server.max_requests_jitter) == (
        4, 8000, 30, 0, 0,
    )
    assert server.graceful_timeout == server.timeout
    assert server.bind == "0.0.0.0:8000"


def test_graceful_timeout_follows_timeout_unless_set() -> None:
    assert load_settings(environ={**TESTING, "GUNICORN_TIMEOUT": "12"}).server.graceful_timeout == 12
    both = load_settings(environ={**TESTING, "GUNICORN_TIMEOUT": "12", "GUNICORN_GRACEFUL_TIMEOUT": "40"})
    assert (both.server.timeout, both.server.graceful_timeout) == (12, 40)


def test_ipv6_host_is_bracketed_in_bind() -> None:
    assert load_settings(environ={**TESTING, "GUNICORN_HOST": "::1"}).server.bind == "[::1]:8000"


# Layer precedence ----------------------------------------------------------------------------

LAYERED_TOML = """
[default]
debug = false
allowed_hosts = ["default.example"]
log_level = "INFO"
log_format = "json"
time_zone = "UTC"
database_url = "sqlite:///default.sqlite3"
database_pool_max_size = 10
[default.gunicorn]
host = "0.0.0.0"
port = 8000
workers = 4
timeout = 30
max_requests = 0
max_requests_jitter = 0
keepalive = 5
max_header_bytes = 32768
header_timeout = 10
max_body_bytes = 1048576
metrics_port = 9464
worker_connections = 1000
[default.provider]
url = "https://provider.example/v3"
connect_timeout = 3.0
read_timeout = 3.0
retries = 2
reread_seconds = 5
unknown_reads_per_minute = 60
[default.orders]
expiry_minutes = 15
reconcile_after_minutes = 10
hold_max_minutes = 60
retention_days = 30
provider_recheck_seconds = 2.0
status_provider_budget_seconds = 1.0
reconcile_list_hours = 24
make_window_seconds = 120
make_timeout_seconds = 600
contact_retention_days = 30
[default.devices]
offline_after_seconds = 120
[default.security]
ssl_redirect = false
hsts_seconds = 0
hsts_include_subdomains = true
hsts_preload = false
admin_login_failure_limit = 5
admin_lockout_minutes = 15

[development]
debug = true
log_level = "DEBUG"
[development.gunicorn]
workers = 2

[production]
[testing]
"""


@pytest.fixture
def layered(tmp_path: Path) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(LAYERED_TOML)
    return path


def test_layer_precedence_default_then_layer_then_env(layered: Path) -> None:
    """Server and Django values: [default] < [development] < environment variable."""
    dev = load_settings(environ={"DJANGO_ENV": "development"}, settings_file=layered)
    assert (dev.server.workers, dev.server.port, dev.debug, dev.log_level) == (2, 8000, True, "DEBUG")
    assert dev.sources["gunicorn.workers"] == "[development]"
    assert dev.sources["gunicorn.port"] == "[default]"
    assert dev.sources["debug"] == "[development]"

    env = load_settings(
        environ={"DJANGO_ENV": "development", "GUNICORN_WORKERS": "3", "DJANGO_DEBUG": "false",
                 "DJANGO_LOG_LEVEL": "warning"},
        settings_file=layered,
    )
    assert (env.server.workers, env.debug, env.log_level) == (3, False, "WARNING")
    assert env.sources["gunicorn.workers"] == "env GUNICORN_WORKERS"
    assert env.sources["debug"] == "env DJANGO_DEBUG"

    testing = load_settings(environ={"DJANGO_ENV": "testing"}, settings_file=layered)
    assert (testing.server.workers, testing.debug) == (4, False)


def test_toml_layer_values_are_validated_like_env_values(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(LAYERED_TOML.replace("[development.gunicorn]\nworkers = 2", "[development.gunicorn]\nworkers = true"))
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={"DJANGO_ENV": "development"}, settings_file=path)
    assert str(refused.value) == "settings.toml [development] gunicorn.workers=True is not a whole number (allowed: 1..64)"


# Django settings from the environment ----------------------------------------------------------

PRODUCTION_OK = {
    "DJANGO_ENV": "production",
    "DJANGO_SECRET_KEY": "s3cret-value-0123456789-abcdefghijklmnopqrstuvwxyz",
    "DJANGO_ALLOWED_HOSTS": " pay.example.com, ,api.example.com ",
    "DATABASE_URL": "postgres://coffee:hunter2@db:5432/coffee",
    "DJANGO_PUBLIC_BASE_URL": "https://pay.example.com",
}


def test_django_env_unset_or_empty_means_production() -> None:
    for environ in ({}, {"DJANGO_ENV": ""}, {"DJANGO_ENV": "  "}):
        with pytest.raises(ConfigError, match="^DJANGO_SECRET_KEY is required in the production layer"):
            load_settings(environ=environ)


@pytest.mark.parametrize("missing", ["DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DATABASE_URL", "DJANGO_PUBLIC_BASE_URL"])
def test_production_refuses_to_start_without_required_variable(missing: str) -> None:
    environ = {key: value for key, value in PRODUCTION_OK.items() if key != missing}
    with pytest.raises(ConfigError) as refused:
        load_settings(environ=environ)
    assert str(refused.value) == f"{missing} is required in the production layer and is not set"


def test_production_reads_its_variables() -> None:
    loaded = load_settings(environ=PRODUCTION_OK)
    assert loaded.layer == "production"
    assert loaded.debug is False
    assert loaded.secret_key == PRODUCTION_OK["DJANGO_SECRET_KEY"]
    assert loaded.allowed_hosts == ("pay.example.com", "api.example.com")
    # Django's PostgreSQL backend with the bounded-wait pool (coffee_payment/postgresql).
    assert loaded.database["ENGINE"] == "coffee_payment.postgresql"
    assert loaded.database["CONN_MAX_AGE"] == 0
    assert loaded.log_format == "json"


def test_production_refuses_debug() -> None:
    with pytest.raises(ConfigError, match=r"^DJANGO_DEBUG='true' is refused in the production layer"):
        load_settings(environ={**PRODUCTION_OK, "DJANGO_DEBUG": "true"})


def test_report_masks_secrets_and_names_sources() -> None:
    rows = {key: (value, source) for key, value, source in load_settings(environ=PRODUCTION_OK).report()}
    assert rows["secret_key"] == ("********", "env DJANGO_SECRET_KEY")
    assert rows["database_url"] == ("postgres://coffee:********@db:5432/coffee", "env DATABASE_URL")
    assert rows["gunicorn.workers"] == ("4", "built-in")
    text = repr(rows)
    assert "s3cret-value" not in text and "hunter2" not in text


def test_the_report_has_a_row_per_declared_setting_in_declaration_order() -> None:
    keys = [key for key, _, _ in load_settings(environ=PRODUCTION_OK).report()]
    assert keys == ["layer", *(setting.key for setting in DECLARED)]


def test_development_and_testing_generate_a_secret_key_when_unset() -> None:
    first, second = (load_settings(environ=TESTING).secret_key for _ in range(2))
    assert len(first) >= 50 and first != second


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"DJANGO_ENV": "staging"}, "DJANGO_ENV='staging' is not a settings layer (allowed: development, production, testing)"),
        ({**TESTING, "DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG='maybe' is not a boolean (allowed: true/false, 1/0, yes/no, on/off)"),
        ({**TESTING, "DJANGO_LOG_LEVEL": "loud"}, "DJANGO_LOG_LEVEL='loud' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ({**TESTING, "DATABASE_URL": "mysql2://u:pw@h/db"}, "DATABASE_URL='mysql2://u:********@h/db' is not a database URL (allowed: sqlite:///path, postgres://user:password@host:port/name)"),
    ],
)
def test_bad_django_values_get_one_line_naming_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ=environ)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_unknown_gunicorn_variable_is_warned_about_with_the_closest_name() -> None:
    loaded = load_settings(environ={**TESTING, "GUNICORN_WORKER": "3", "GUNICORN_CMD_ARGS": "--workers 2",
                                    "GUNICORN_PID": "1", "GUNICORN_FD": "3"})
    assert loaded.warnings == (
        "GUNICORN_WORKER is not a setting of this server and is ignored; did you mean GUNICORN_WORKERS?",
    )
    assert loaded.server.workers == 4


def test_relative_sqlite_path_is_relative_to_the_project() -> None:
    loaded = load_settings(environ={**TESTING, "DATABASE_URL": "sqlite:///some.sqlite3"})
    assert Path(loaded.database["NAME"]).is_absolute()
    assert Path(loaded.database["NAME"]).parent == Path(__file__).resolve().parents[2]


# Payment provider, order expiry and database pool ---------------------------------------------

PAYMENT_NUMBERS = {
    "PAYMENT_PROVIDER_CONNECT_TIMEOUT": "(allowed: 0.1..30 seconds)",
    "PAYMENT_PROVIDER_READ_TIMEOUT": "(allowed: 0.1..60 seconds)",
    "PAYMENT_PROVIDER_RETRIES": "(allowed: 0..5)",
    "ORDER_EXPIRY_MINUTES": "(allowed: 1..1440)",
    "DATABASE_POOL_MAX_SIZE": "(allowed: 1..100)",
    "ORDER_RECONCILE_AFTER_MINUTES": "(allowed: 1..1440)",
    "ORDER_HOLD_MAX_MINUTES": "(allowed: 1..8640)",
    "ORDER_RETENTION_DAYS": "(allowed: 1..3650)",
    "ORDER_PROVIDER_RECHECK_SECONDS": "(allowed: 1..300 seconds)",
    "ORDER_STATUS_PROVIDER_BUDGET_SECONDS": "(allowed: 0.1..10 seconds)",
    "ORDER_RECONCILE_LIST_HOURS": "(allowed: 1..720)",
    "ORDER_MAKE_WINDOW_SECONDS": "(allowed: 5..3600)",
    "ORDER_MAKE_TIMEOUT_SECONDS": "(allowed: 60..86400)",
    "DEVICE_OFFLINE_AFTER_SECONDS": "(allowed: 10..86400)",
    "ORDER_CONTACT_RETENTION_DAYS": "(allowed: 1..3650)",
    "PAYMENT_PROVIDER_REREAD_SECONDS": "(allowed: 1..300)",
    "PAYMENT_PROVIDER_UNKNOWN_READS_PER_MINUTE": "(allowed: 1..10000)",
}
# Valid alone, refused together: the vend window (default 120 s) must close while a hold is held.
WINDOW_NOT_SHORTER = "is not shorter than ORDER_HOLD_MAX_MINUTES"


@pytest.mark.parametrize(("raw", "message"), [
    ("0.2", "DATABASE_WAIT_TIMEOUT='0.2' is out of range (allowed: 0.5..60 seconds)"),
    ("3s", "DATABASE_WAIT_TIMEOUT='3s' is not a number of seconds (allowed: 0.5..60 seconds)"),
    ("30", "DATABASE_WAIT_TIMEOUT='30' is not below GUNICORN_TIMEOUT=30 (built-in) (a request "
           "waiting for the database must get its 503 page first)"),
])
def test_a_pool_wait_the_request_timeout_cannot_cover_is_refused(raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={**TESTING, "DATABASE_WAIT_TIMEOUT": raw})
    assert str(refused.value) == message


def test_the_pool_wait_follows_a_short_request_timeout_unless_set() -> None:
    assert load_settings(environ=TESTING).database_wait_timeout == 3.0
    for timeout, wait_timeout in (("1", 0.5), ("4", 2.0), ("6", 3.0), ("3600", 3.0)):
        loaded = load_settings(environ={**PRODUCTION_OK, **QUICK_PROVIDER, "GUNICORN_TIMEOUT": timeout})
        assert (loaded.database_wait_timeout, loaded.database["OPTIONS"]["pool"]["timeout"]) == (wait_timeout,) * 2
    assert load_settings(environ={**TESTING, **QUICK_PROVIDER, "GUNICORN_TIMEOUT": "3", "DATABASE_WAIT_TIMEOUT": "2.5"}
                         ).database_wait_timeout == 2.5
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={**TESTING, **QUICK_PROVIDER, "GUNICORN_TIMEOUT": "3", "DATABASE_WAIT_TIMEOUT": "3"})
    assert str(refused.value) == ("DATABASE_WAIT_TIMEOUT='3' is not below GUNICORN_TIMEOUT='3' "
                                  "(a request waiting for the database must get its 503 page first)")


def test_a_hold_is_always_released_before_the_providers_seven_day_limit() -> None:
    longest = load_settings(environ={**PRODUCTION_OK, "ORDER_HOLD_MAX_MINUTES": "8640"}).order_hold_max_minutes
    assert longest < 7 * 24 * 60
    with pytest.raises(ConfigError, match="ORDER_HOLD_MAX_MINUTES"):
        load_settings(environ={**PRODUCTION_OK, "ORDER_HOLD_MAX_MINUTES": str(7 * 24 * 60)})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"ORDER_MAKE_WINDOW_SECONDS": "3600"}, "ORDER_MAKE_WINDOW_SECONDS='3600' is not shorter than "
         "ORDER_HOLD_MAX_MINUTES=60 (built-in) (3600 seconds) (allowed: less, "),
        ({"ORDER_HOLD_MAX_MINUTES": "2"}, "ORDER_MAKE_WINDOW_SECONDS=120 (built-in) is not shorter "
         "than ORDER_HOLD_MAX_MINUTES='2' (120 seconds)"),
    ],
)
def test_a_vend_window_that_outlasts_the_hold_is_refused_naming_both(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={**PRODUCTION_OK, **environ})
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    shorter = load_settings(environ={**PRODUCTION_OK, "ORDER_MAKE_WINDOW_SECONDS": "3599"})
    assert (shorter.order_make_window_seconds, shorter.order_hold_max_minutes) == (3599, 60)


@pytest.mark.parametrize(("offline", "interval"), [("10", 2), ("120", 30), ("86400", 21600)])
def test_a_machines_last_call_is_written_at_most_once_per_quarter_of_the_offline_limit(offline: str, interval: int
                                                                                       ) -> None:
    loaded = load_settings(environ={**TESTING, "DEVICE_OFFLINE_AFTER_SECONDS": offline})
    assert loaded.device_seen_interval_seconds == interval < loaded.device_offline_after_seconds


@pytest.mark.parametrize(("window", "check"), [("5", 1.25), ("40", 10.0), ("3599", 10.0)])
def test_due_vend_windows_are_checked_well_within_a_minute(window: str, check: float) -> None:
    loaded = load_settings(environ={**TESTING, "ORDER_MAKE_WINDOW_SECONDS": window})
    assert loaded.order_make_window_check_seconds == check


def test_production_starts_without_provider_secrets() -> None:
    """Containers start production without shop secrets; payments then fail per merchant, clearly."""
    loaded = load_settings(environ=PRODUCTION_OK)
    assert loaded.provider.secrets == {}
    assert loaded.sources["provider.secrets"] == "not set"


def test_provider_secrets_come_from_the_environment_and_are_masked() -> None:
    loaded = load_settings(environ={**TESTING, "PAYMENT_PROVIDER_SECRETS": " 506751:live_s3cr3t , demo-shop:pw:with:colons "})
    assert loaded.provider.secrets == {"506751": "live_s3cr3t", "demo-shop": "pw:with:colons"}
    rows = {key: (value, source) for key, value, source in loaded.report()}
    assert rows["provider.secrets"] == ("506751:********,demo-shop:********", "env PAYMENT_PROVIDER_SECRETS")
    assert "live_s3cr3t" not in repr(rows) + repr(loaded)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        # No ":": the entry may be the secret alone, so nothing of it is shown.
        ("live_s3cr3t", "entry 1 is not shop_id:secret (value not shown)"),
        ("506751:", "entry 1 is not shop_id:secret (value not shown)"),
        ("a:1,shop one:live_s3cr3t", "entry 2 is not shop_id:secret (value not shown)"),
        # A secret with a ":" after it looks like a shop without a secret: still not shown.
        ("a:1,live_s3cr3t:", "entry 2 is not shop_id:secret (value not shown)"),
        ("a:live_s3cr3t,a:other", "entry 2 repeats shop 'a' (allowed: each shop once)"),
    ],
)
def test_bad_provider_secrets_are_refused_without_showing_a_secret(raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={**TESTING, "PAYMENT_PROVIDER_SECRETS": raw})
    assert str(refused.value).startswith(f"PAYMENT_PROVIDER_SECRETS {message}")
    assert "live_s3cr3t" not in str(refused.value) and "\n" not in str(refused.value)


def test_provider_secrets_in_settings_toml_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(LAYERED_TOML.replace("[default.orders]", 'secrets = "a:b"\n[default.orders]'))
    with pytest.raises(ConfigError) as refused:
        load_settings(environ=TESTING, settings_file=path)
    assert str(refused.value) == (
        "settings.toml [default] provider.secrets is refused: provider secrets come from PAYMENT_PROVIDER_SECRETS only"
    )


@pytest.mark.parametrize(
    "raw", ["ftp://provider.example/v3", "http://", "provider.example/v3", "https://u:p@provider.example/v3",
            "https://provider.example/v3?shop=1", "https://provider.example/v3#x"],
)
def test_bad_provider_url_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={**TESTING, "PAYMENT_PROVIDER_URL": raw})
    shown = raw.replace("u:p@", "********@")
    assert str(refused.value).startswith(f"PAYMENT_PROVIDER_URL={shown!r} is not a base URL (allowed: http(s)://")


def test_provider_url_loses_its_trailing_slash() -> None:
    loaded = load_settings(environ={**TESTING, "PAYMENT_PROVIDER_URL": " http://127.0.0.1:9000/v3/ "})
    assert loaded.provider.url == "http://127.0.0.1:9000/v3"


@hypothesis_settings(max_examples=150, deadline=None)
@given(
    variable=st.sampled_from(sorted(PAYMENT_NUMBERS)),
    raw=st.one_of(MALFORMED, st.integers(-5, 2000).map(str), st.decimals(0, 100, places=2).map(str)),
)
def test_payment_numbers_are_exact_or_refused_naming_the_variable(variable: str, raw: str) -> None:
    try:
        loaded = load_settings(environ={**TESTING, variable: raw})
    except ConfigError as refused:
        if "does not fit in GUNICORN_TIMEOUT=30" in str(refused):  # in range, but too long a wait
            assert f"{variable}={float(raw) if 'TIMEOUT' in variable else int(raw):g}" in str(refused)
            return
        if variable == "ORDER_HOLD_MAX_MINUTES" and raw.strip() in ("1", "2"):
            assert WINDOW_NOT_SHORTER + f"={raw!r} ({int(raw) * 60} seconds)" in str(refused)
            return
        assert str(refused).startswith(f"{variable}={raw!r} is ")
        assert str(refused).endswith(PAYMENT_NUMBERS[variable])
        return
    values = {
        "PAYMENT_PROVIDER_CONNECT_TIMEOUT": loaded.provider.connect_timeout,
        "PAYMENT_PROVIDER_READ_TIMEOUT": loaded.provider.read_timeout,
        "PAYMENT_PROVIDER_RETRIES": loaded.provider.retries,
        "ORDER_EXPIRY_MINUTES": loaded.order_expiry_minutes,
        "DATABASE_POOL_MAX_SIZE": loaded.database_pool_max_size,
        "ORDER_RECONCILE_AFTER_MINUTES": loaded.order_reconcile_after_minutes,
        "ORDER_HOLD_MAX_MINUTES": loaded.order_hold_max_minutes,
        "ORDER_RETENTION_DAYS": loaded.order_retention_days,
        "ORDER_PROVIDER_RECHECK_SECONDS": loaded.order_provider_recheck_seconds,
        "ORDER_STATUS_PROVIDER_BUDGET_SECONDS": loaded.order_status_provider_budget_seconds,
        "ORDER_RECONCILE_LIST_HOURS": loaded.order_reconcile_list_hours,
        "ORDER_MAKE_WINDOW_SECONDS": loaded.order_make_window_seconds,
        "ORDER_MAKE_TIMEOUT_SECONDS": loaded.order_make_timeout_seconds,
        "DEVICE_OFFLINE_AFTER_SECONDS": loaded.device_offline_after_seconds,
        "ORDER_CONTACT_RETENTION_DAYS": loaded.order_contact_retention_days,
        "PAYMENT_PROVIDER_REREAD_SECONDS": loaded.provider.reread_seconds,
        "PAYMENT_PROVIDER_UNKNOWN_READS_PER_MINUTE": loaded.provider.unknown_reads_per_minute,
    }
    assert values[variable] == (float(raw) if "SECONDS" in variable or "TIMEOUT" in variable else int(raw))


def test_provider_waits_that_cannot_fit_in_the_request_deadline_are_refused_in_one_line() -> None:
    """Every attempt with its timeouts, and the back-off before each retry, must end half a second
    before GUNICORN_TIMEOUT: else the customer would get the 504 instead of the 503 page."""
    old = {"PAYMENT_PROVIDER_CONNECT_TIMEOUT": "3", "PAYMENT_PROVIDER_READ_TIMEOUT": "10", "PAYMENT_PROVIDER_RETRIES": "2"}
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={**PRODUCTION_OK, **old})
    assert str(refused.value) == (
        "PAYMENT_PROVIDER_CONNECT_TIMEOUT=3, PAYMENT_PROVIDER_READ_TIMEOUT=10 and PAYMENT_PROVIDER_RETRIES=2 let a "
        "provider call wait 39.6 s, which does not fit in GUNICORN_TIMEOUT=30 (allowed: (1 + retries) x (connect + "
        "read timeout) + 0.2 s x n before retry n, at most GUNICORN_TIMEOUT - 0.5 s = 29.5 s)")
    # The same waits fit a longer request deadline; the defaults fit the default one: about 10 s.
    assert load_settings(environ={**PRODUCTION_OK, **old, "GUNICORN_TIMEOUT": "41"}).provider.retries == 2
    defaults = load_settings(environ=PRODUCTION_OK).provider
    assert (defaults.connect_timeout, defaults.read_timeout, defaults.retries) == (3, 3, 2)
    with pytest.raises(ConfigError, match=r"^ORDER_STATUS_PROVIDER_BUDGET_SECONDS=5 does not fit in GUNICORN_TIMEOUT=5 "):
        load_settings(environ={**TESTING, **QUICK_PROVIDER, "GUNICORN_TIMEOUT": "5",
                               "ORDER_STATUS_PROVIDER_BUDGET_SECONDS": "5"})


def test_postgres_gets_a_bounded_pool_and_connect_timeout() -> None:
    loaded = load_settings(environ={**PRODUCTION_OK, "DATABASE_POOL_MAX_SIZE": "6", "DATABASE_WAIT_TIMEOUT": "1.5"})
    assert loaded.database["CONN_MAX_AGE"] == 0
    assert loaded.database["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 6, "timeout": 1.5,
                                                  "reconnect_timeout": 0.25}
    assert loaded.database["OPTIONS"]["connect_timeout"] == 2
    assert loaded.database["OPTIONS"]["options"] == "-c lock_timeout=1500"
    assert load_settings(environ=PRODUCTION_OK).database["OPTIONS"]["pool"]["timeout"] == 3.0
    # The URL's own server options are kept, the lock timeout added.
    given = load_settings(environ={**PRODUCTION_OK, "DATABASE_URL": "postgres://u:p@db/app?options=-c%20work_mem%3D8MB"})
    assert given.database["OPTIONS"]["options"] == "-c work_mem=8MB -c lock_timeout=3000"
    sqlite = load_settings(environ={**TESTING, "DATABASE_URL": "sqlite:///x.sqlite3"})
    assert "pool" not in sqlite.database.get("OPTIONS", {})


# Public base URL and SQLite -----------------------------------------------------------------------


def test_public_base_url_per_layer() -> None:
    assert load_settings(environ=PRODUCTION_OK).public_base_url == "https://pay.example.com"
    assert load_settings(environ={"DJANGO_ENV": "development"}).public_base_url == "http://localhost:8000"
    assert load_settings(environ=TESTING).public_base_url == "http://testserver"
    given = load_settings(environ={**TESTING, "DJANGO_PUBLIC_BASE_URL": " https://pay.example.com:8443/ "})
    assert (given.public_base_url, given.sources["public_base_url"]) == ("https://pay.example.com:8443",
                                                                         "env DJANGO_PUBLIC_BASE_URL")


@pytest.mark.parametrize(("base_url", "added"), [("http://192.168.1.20:8000", "192.168.1.20"),
                                                 ("http://[fd00::20]:8000", "[fd00::20]"), ("http://localhost:8000", None)])
def test_development_answers_at_its_public_base_url(base_url: str, added: str | None) -> None:
    """`make run BASE_URL=http://192.168.1.20:8000`: a phone on the network gets the page, not a 400."""
    loaded = load_settings(environ={"DJANGO_ENV": "development", "DJANGO_PUBLIC_BASE_URL": base_url})
    assert loaded.allowed_hosts == ("localhost", "127.0.0.1", "[::1]", *([added] if added else []))
    assert loaded.sources["allowed_hosts"] == "[development]" + (" + the host of public_base_url" if added else "")


def test_production_answers_only_the_hosts_it_is_given() -> None:
    loaded = load_settings(environ={**PRODUCTION_OK, "DJANGO_PUBLIC_BASE_URL": "https://shop.example.com"})
    assert loaded.allowed_hosts == ("pay.example.com", "api.example.com")


@pytest.mark.parametrize("raw", ["pay.example.com", "ftp://pay.example.com", "https://pay.example.com/shop",
                                 "https://u:p@pay.example.com", "https://pay.example.com?x=1", "https://"])
def test_bad_public_base_url_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={**PRODUCTION_OK, "DJANGO_PUBLIC_BASE_URL": raw})
    assert str(refused.value) == (f"DJANGO_PUBLIC_BASE_URL={raw!r} is not a base URL "
                                  "(allowed: http(s)://host[:port], no path, no user, query or fragment)")


def test_sqlite_gets_immediate_transactions_a_busy_timeout_and_wal() -> None:
    options = load_settings(environ={**TESTING, "DATABASE_URL": "sqlite:///x.sqlite3"}).database["OPTIONS"]
    assert options == {"transaction_mode": "IMMEDIATE", "timeout": 3.0,
                       "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"}
    waits = load_settings(environ={**TESTING, "DATABASE_URL": "sqlite:///x.sqlite3", "DATABASE_WAIT_TIMEOUT": "1.5"})
    assert waits.database["OPTIONS"]["timeout"] == 1.5
    given = load_settings(environ={**TESTING, "DATABASE_URL": "sqlite:///x.sqlite3?timeout=5"}).database["OPTIONS"]
    assert (given["timeout"], given["transaction_mode"]) == (5, "IMMEDIATE")


def test_production_refuses_sqlite_unless_allowed() -> None:
    sqlite = {**PRODUCTION_OK, "DATABASE_URL": "sqlite:////data/db.sqlite3"}
    with pytest.raises(ConfigError) as refused:
        load_settings(environ=sqlite)
    assert str(refused.value) == (
        "DATABASE_URL='sqlite:////data/db.sqlite3' is SQLite, refused in the production layer "
        "(use PostgreSQL, or set DATABASE_ALLOW_SQLITE=true for a single replica)"
    )
    allowed = load_settings(environ={**sqlite, "DATABASE_ALLOW_SQLITE": "true"})
    assert (allowed.database_allow_sqlite, allowed.sources["database_allow_sqlite"]) == (True, "env DATABASE_ALLOW_SQLITE")
    assert load_settings(environ={**TESTING, "DATABASE_URL": "sqlite:///x.sqlite3"}).database_allow_sqlite is False
    with pytest.raises(ConfigError, match=r"^DATABASE_ALLOW_SQLITE='once' is not a boolean"):
        load_settings(environ={**sqlite, "DATABASE_ALLOW_SQLITE": "once"})
# Secrets never appear in a configuration error --------------------------------------------------

SECRET_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.~!$&'()*+;=%",
                      min_size=12, max_size=40)
# Each form puts the secret where an operator's typo would: (variable, value with {s} for the secret).
LEAKY_FORMS = [
    ("PAYMENT_PROVIDER_SECRETS", "{s}"),
    ("PAYMENT_PROVIDER_SECRETS", "{s}:"),
    ("PAYMENT_PROVIDER_SECRETS", "shop-1:ok,{s}"),
    ("PAYMENT_PROVIDER_SECRETS", "shop one:{s}"),
    ("PAYMENT_PROVIDER_SECRETS", " : {s}"),
    ("PAYMENT_PROVIDER_URL", "https://user:{s}@provider.example/v3"),
    ("PAYMENT_PROVIDER_URL", "https://{s}@provider.example/v3"),
    ("PAYMENT_PROVIDER_URL", "ftp://user:{s}@provider.example/v3"),
    ("PAYMENT_PROVIDER_URL", "https://user:{s}@provider.example/v3?x=1"),
    ("PAYMENT_PROVIDER_URL", "user:{s}@provider.example/v3"),
    ("DATABASE_URL", "mysql://coffee:{s}@db:3306/coffee"),
    ("DATABASE_URL", "postgres//coffee:{s}@db:5432/coffee"),
    ("DATABASE_URL", "nosuchscheme://coffee:{s}@db/coffee"),
    ("DATABASE_URL", "mysql://db/coffee?password={s}"),
    ("DJANGO_SECRET_KEY", "{s}"),
]


# Each example loads the settings (about 0.15 s): enough to vary every form a few times.
@hypothesis_settings(max_examples=60, deadline=None)
@given(form=st.sampled_from(LEAKY_FORMS), secret=SECRET_TEXT, at=st.booleans())
@example(form=("DATABASE_URL", "mysql://coffee:{s}@db:3306/coffee"), secret="000000SE_URL", at=True)
def test_no_configuration_error_shows_a_secret(form: tuple[str, str], secret: str, at: bool) -> None:
    """Whatever the typo, the message names the variable and never shows the secret (nor a part of
    it on either side of an "@" inside it)."""
    variable, template = form
    # A password may itself contain "@": neither side of it may show.
    parts = [secret[: len(secret) // 2], secret[len(secret) // 2:]] if at else [secret]
    value = template.format(s="@".join(parts))
    try:
        load_settings(environ={**PRODUCTION_OK, variable: value})
    except ConfigError as refused:
        message = str(refused)
    else:
        return  # accepted (a weak-looking key that passes W009, a URL that happens to be valid)
    assert message.startswith(variable), message
    for part in parts:
        if part in message:
            # A short part may be a word of the message itself ("SE_URL" of DATABASE_URL): it is a
            # leak only if the same typo with another secret of that length shows it less often.
            other = template.format(s="@".join("~" * len(each) for each in parts))
            with pytest.raises(ConfigError) as reference:
                load_settings(environ={**PRODUCTION_OK, variable: other})
            assert message.count(part) <= str(reference.value).count(part), message


@pytest.mark.parametrize("key", [
    "short-key",  # too short
    "ab" * 40,  # long, but 2 different characters
    "django-insecure-" + "0123456789abcdefghijklmnopqrstuvwxyz0123456789",  # Django's generated-for-development prefix
])
def test_production_refuses_a_weak_secret_key_without_showing_it(key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={**PRODUCTION_OK, "DJANGO_SECRET_KEY": key})
    assert str(refused.value).startswith("DJANGO_SECRET_KEY is too weak (value not shown; allowed: at least 50 characters")
    assert key not in str(refused.value)
    # Outside production a short key is the developer's business.
    assert load_settings(environ={**TESTING, "DJANGO_SECRET_KEY": key}).secret_key == key


# Keys about Django's bounds: 50 characters, 5 different ones, its development prefix.
SECRET_KEYS = st.one_of(
    st.text(alphabet="abcdef", min_size=44, max_size=56),
    st.text(max_size=60),
    st.text(min_size=30, max_size=50).map(lambda tail: "django-insecure-" + tail),
)


@hypothesis_settings(deadline=None)  # the suite's two lanes share the CPU
@given(key=SECRET_KEYS)
def test_the_production_secret_key_rule_is_djangos_w009(key: str) -> None:
    """The loader's own check (Django's function for it is private) refuses what `check --deploy`
    warns about (security.W009), and only that."""
    from django.core.checks.security.base import check_secret_key
    from django.test import override_settings

    with override_settings(SECRET_KEY=key):
        django_weak = bool(check_secret_key(None))
    assert secret_key_is_strong(key) is not django_weak


def test_every_bad_value_is_named_in_one_message() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={**TESTING, "GUNICORN_WORKERS": "true", "ORDER_EXPIRY_MINUTES": "0",
                               "DJANGO_LOG_FORMAT": "xml"})
    assert str(refused.value) == (
        "DJANGO_LOG_FORMAT='xml' is not one of json, text; "
        "GUNICORN_WORKERS='true' is not a whole number (allowed: 1..64); "
        "ORDER_EXPIRY_MINUTES='0' is out of range (allowed: 1..1440)"
    )


def test_values_are_text_not_dynaconf_expressions() -> None:
    """Dynaconf's "@int", "@format" and "@jinja" tokens in a value are neither cast nor evaluated."""
    with pytest.raises(ConfigError, match=r"^GUNICORN_WORKERS='@int 5' is not a whole number"):
        load_settings(environ={**TESTING, "GUNICORN_WORKERS": "@int 5"})
    assert load_settings(environ={**TESTING, "GUNICORN_HOST": "@format {env[HOME]}"}).server.host == "@format {env[HOME]}"
# The metrics directory --------------------------------------------------------------------------


def test_the_metrics_directory_defaults_to_memory_and_must_be_absolute() -> None:
    assert load_settings(environ=TESTING).server.metrics_dir == "/dev/shm/coffee-payment-metrics"
    development = load_settings(environ={"DJANGO_ENV": "development"})
    assert development.server.metrics_dir == "/tmp/coffee-payment-metrics"
    assert load_settings(environ={**TESTING, "GUNICORN_METRICS_DIR": "/run/metrics/"}).server.metrics_dir == "/run/metrics"
    for value in ("metrics", "/", "./tmp"):
        with pytest.raises(ConfigError) as refused:
            load_settings(environ={**TESTING, "GUNICORN_METRICS_DIR": value})
        assert str(refused.value) == (
            f"GUNICORN_METRICS_DIR={value!r} is not an absolute directory path (allowed: /path/to/dir, not / itself)"
        )


# Proxy trust and the metrics port ------------------------------------------------------------------


def test_no_proxy_is_trusted_unless_addresses_and_networks_are_given() -> None:
    assert load_settings(environ=TESTING).server.forwarded_allow_ips == ()
    given = load_settings(environ={**TESTING, "GUNICORN_FORWARDED_ALLOW_IPS": " 10.244.0.0/16, 127.0.0.1,::1 ,"})
    assert given.server.forwarded_allow_ips == ("10.244.0.0/16", "127.0.0.1", "::1")
    assert dict((key, value) for key, value, _ in given.report())["gunicorn.forwarded_allow_ips"] == (
        "10.244.0.0/16,127.0.0.1,::1")


@pytest.mark.parametrize(("raw", "entry", "reason"), [
    ("10.244.0.0/33", "10.244.0.0/33", "does not appear to be an IPv4 or IPv6 network"),
    ("127.0.0.1,10.244.0.1/16", "10.244.0.1/16", "has host bits set"),
    ("*", "*", "does not appear"),  # trusting every peer is what the setting exists to prevent
    ("ingress.example.com", "ingress.example.com", "does not appear"),
])
def test_a_bad_trusted_proxy_entry_is_refused_naming_it(raw: str, entry: str, reason: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={**TESTING, "GUNICORN_FORWARDED_ALLOW_IPS": raw})
    message = str(refused.value)
    assert message.startswith(f"GUNICORN_FORWARDED_ALLOW_IPS={raw!r} entry {entry!r} is not an IP address or CIDR network")
    assert reason in message and message.endswith("(allowed: comma-separated addresses and networks, "
                                                  "e.g. 10.244.0.0/16,127.0.0.1)")


def test_notification_senders_are_any_unless_listed() -> None:
    assert load_settings(environ=TESTING).provider.notification_addresses == ()
    listed = load_settings(environ={**TESTING, "PAYMENT_PROVIDER_NOTIFICATION_ADDRESSES": "185.71.76.0/27,2a02:5180::/32"})
    assert listed.provider.notification_addresses == ("185.71.76.0/27", "2a02:5180::/32")
    with pytest.raises(ConfigError, match=r"^PAYMENT_PROVIDER_NOTIFICATION_ADDRESSES='yookassa' entry 'yookassa' is not"):
        load_settings(environ={**TESTING, "PAYMENT_PROVIDER_NOTIFICATION_ADDRESSES": "yookassa"})


def test_the_metrics_port_is_its_own_or_none() -> None:
    assert load_settings(environ=TESTING).server.metrics_port == 9464
    assert load_settings(environ={**TESTING, "GUNICORN_METRICS_PORT": "0"}).server.metrics_port == 0
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={**TESTING, "GUNICORN_PORT": "9000", "GUNICORN_METRICS_PORT": "9000"})
    assert str(refused.value) == "GUNICORN_METRICS_PORT='9000' is also GUNICORN_PORT (allowed: another port, or 0 for none)"


def test_trusted_proxies_in_settings_toml_are_text_entries(tmp_path: Path) -> None:
    toml = tmp_path / "settings.toml"
    toml.write_text(LAYERED_TOML.replace("[default.gunicorn]\n", "[default.gunicorn]\nforwarded_allow_ips = [5]\n"))
    with pytest.raises(ConfigError, match=r"entry '5' is not an IP address or CIDR network: 5 is not text"):
        load_settings(environ=TESTING, settings_file=toml)
    toml.write_text(LAYERED_TOML.replace("[default.gunicorn]\n", '[default.gunicorn]\nforwarded_allow_ips = ["10.244.0.0/16"]\n'))
    assert load_settings(environ=TESTING, settings_file=toml).server.forwarded_allow_ips == ("10.244.0.0/16",)
