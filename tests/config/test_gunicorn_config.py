"""config/gunicorn.py as Gunicorn loads it: resolved values, precedence, refusals (R1, R2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devtools.processes import BIN, base_environ, run

pytestmark = pytest.mark.timeout(60)


def print_config(env: dict[str, str], *args: str) -> dict[str, str]:
    result = run([str(BIN / "gunicorn"), "-c", "config/gunicorn.py", "--print-config", *args], env=env)
    assert result.returncode == 0, result.stderr
    pairs = (re.match(r"^(\w+)\s+= (.*)$", line) for line in result.stdout.splitlines())
    return {m.group(1): m.group(2) for m in pairs if m}


def production_environ(tmp_path: Path) -> dict[str, str]:
    env = base_environ(tmp_path)
    for variable in ("GUNICORN_HOST", "GUNICORN_PORT", "GUNICORN_METRICS_PORT"):
        env.pop(variable)
    env.update(DJANGO_ENV="production", DJANGO_SECRET_KEY="x" * 40 + "0123456789", DJANGO_ALLOWED_HOSTS="pay.example.com",
               DJANGO_PUBLIC_BASE_URL="https://pay.example.com", DATABASE_ALLOW_SQLITE="true")
    return env


def test_r2_6_print_config_shows_defaults_with_no_gunicorn_variables(tmp_path: Path) -> None:
    """R1.1-R1.3, R2.6-R2.11: the production layer's resolved server settings."""
    config = print_config(production_environ(tmp_path))
    # The metrics port beside the app's (coffee_payment/metrics.py).
    assert config["bind"] == "['0.0.0.0:8000', '0.0.0.0:9464']"
    # No proxy is trusted: no client picks its own address or scheme.
    assert config["forwarded_allow_ips"] == "[]"
    assert config["worker_connections"] == "1000"
    assert config["workers"] == "4"
    assert config["timeout"] == "30"
    assert config["max_requests"] == "0"
    assert config["max_requests_jitter"] == "0"
    # GUNICORN_GRACEFUL_TIMEOUT (= GUNICORN_TIMEOUT) for the workers' drain, 2 s more for the
    # master's SIGKILL.
    assert config["graceful_timeout"] == "32"
    assert config["wsgi_app"] == "coffee_payment.asgi:application"
    assert config["worker_class"] == "coffee_payment.workers.DrainingUvicornWorker"
    assert config["control_socket_disable"] == "True"
    assert config["worker_tmp_dir"] == ("/dev/shm" if Path("/dev/shm").is_dir() else "None")


def test_r2_variables_reach_gunicorn(tmp_path: Path) -> None:
    """R1.5, R2.1-R2.5: each variable lands in Gunicorn's resolved configuration."""
    # A timeout with room for the default provider waits (18.6 s, else the loader refuses it).
    env = production_environ(tmp_path) | {
        "GUNICORN_WORKERS": "3", "GUNICORN_PORT": "9123", "GUNICORN_TIMEOUT": "20",
        "GUNICORN_MAX_REQUESTS": "500", "GUNICORN_MAX_REQUESTS_JITTER": "50",
    }
    config = print_config(env)
    assert (config["workers"], config["bind"], config["timeout"]) == ("3", "['0.0.0.0:9123', '0.0.0.0:9464']", "20")
    assert (config["max_requests"], config["max_requests_jitter"]) == ("500", "50")


def test_proxy_trust_connection_limit_and_metrics_port_reach_gunicorn(tmp_path: Path) -> None:
    env = production_environ(tmp_path) | {
        "GUNICORN_FORWARDED_ALLOW_IPS": "10.244.0.0/16, 127.0.0.1", "GUNICORN_WORKER_CONNECTIONS": "50",
        "GUNICORN_METRICS_PORT": "0",
    }
    config = print_config(env)
    assert config["forwarded_allow_ips"] == "['10.244.0.0/16', '127.0.0.1']"
    assert config["worker_connections"] == "50"
    assert config["bind"] == "['0.0.0.0:8000']"  # 0: no metrics listener


def test_gunicorn_cmd_args_and_flags_win_over_the_file(tmp_path: Path) -> None:
    env = production_environ(tmp_path) | {"GUNICORN_WORKERS": "3", "GUNICORN_CMD_ARGS": "--workers 5"}
    assert print_config(env)["workers"] == "5"
    assert print_config(env, "--workers", "6")["workers"] == "6"


@pytest.mark.parametrize(
    ("variable", "raw"),
    [("GUNICORN_WORKERS", "true"), ("GUNICORN_PORT", "70000"), ("GUNICORN_TIMEOUT", "2.5"),
     ("GUNICORN_MAX_REQUESTS", "1e3"), ("GUNICORN_MAX_REQUESTS_JITTER", "-1"),
     ("GUNICORN_FORWARDED_ALLOW_IPS", "*"), ("GUNICORN_WORKER_CONNECTIONS", "5")],
)
def test_bad_value_stops_start_with_one_line_before_binding(tmp_path: Path, variable: str, raw: str) -> None:
    env = base_environ(tmp_path) | {variable: raw}
    result = run([str(BIN / "gunicorn"), "-c", "config/gunicorn.py"], env=env, timeout=30)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(f"configuration error: {variable}={raw!r} ")
    assert "Traceback" not in result.stderr + result.stdout
    assert "Listening at" not in result.stderr + result.stdout


def test_production_without_secret_key_refuses_to_start(tmp_path: Path) -> None:
    env = production_environ(tmp_path)
    del env["DJANGO_SECRET_KEY"]
    result = run([str(BIN / "gunicorn"), "-c", "config/gunicorn.py"], env=env, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "configuration error: DJANGO_SECRET_KEY is required in the production layer and is not set"
    )


def test_unknown_gunicorn_variable_is_warned_about(tmp_path: Path) -> None:
    env = production_environ(tmp_path) | {"GUNICORN_WORKER": "2"}
    result = run([str(BIN / "gunicorn"), "-c", "config/gunicorn.py", "--print-config"], env=env)
    assert result.returncode == 0
    assert "GUNICORN_WORKER is not a setting of this server and is ignored; did you mean GUNICORN_WORKERS?" in result.stderr


@pytest.mark.parametrize("args", [[], ["--print-config"]])
def test_every_missing_required_variable_in_one_message(tmp_path: Path, args: list[str]) -> None:
    env = production_environ(tmp_path)
    for variable in ("DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DJANGO_PUBLIC_BASE_URL"):
        del env[variable]
    result = run([str(BIN / "gunicorn"), "-c", "config/gunicorn.py", *args], env=env, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip() == "configuration error: " + "; ".join(
        f"{variable} is required in the production layer and is not set"
        for variable in ("DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DJANGO_PUBLIC_BASE_URL")
    )
    assert "Listening at" not in result.stderr + result.stdout
def test_a_metrics_directory_that_cannot_be_created_stops_start_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    env = base_environ(tmp_path) | {"GUNICORN_METRICS_DIR": str(tmp_path / "a-file" / "metrics")}
    result = run([str(BIN / "gunicorn"), "-c", "config/gunicorn.py"], env=env, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip() == (
        f"configuration error: GUNICORN_METRICS_DIR={str(tmp_path / 'a-file' / 'metrics')!r} cannot be created: "
        "Not a directory"
    )
