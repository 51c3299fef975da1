"""`manage.py show_config`: effective settings with their source, secrets masked."""

from __future__ import annotations

from pathlib import Path

import re

import pytest

from devtools.processes import BIN, base_environ, run
from tests.config.test_gunicorn_config import print_config


def test_show_config_names_the_source_of_each_value(tmp_path: Path) -> None:
    env = base_environ(tmp_path, GUNICORN_WORKERS="2", DJANGO_SECRET_KEY="do-not-print-me")
    result = run([str(BIN / "python"), "manage.py", "show_config"], env=env)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    assert rows["gunicorn.workers"] == ["2", "env", "GUNICORN_WORKERS"]
    assert rows["gunicorn.port"][1:] == ["env", "GUNICORN_PORT"]
    assert rows["gunicorn.timeout"] == ["30", "built-in"]
    assert rows["layer"] == ["testing", "env", "DJANGO_ENV"]
    assert rows["log_format"] == ["text", "[testing]"]
    assert rows["secret_key"] == ["********", "env", "DJANGO_SECRET_KEY"]
    assert "do-not-print-me" not in result.stdout


@pytest.mark.parametrize("graceful", [None, "45"])
def test_show_config_and_print_config_agree_on_the_graceful_timeout(tmp_path: Path, graceful: str | None) -> None:
    """show_config's value is the drain's; --print-config's is Gunicorn's, 2 s later: the row says both."""
    env = base_environ(tmp_path, **({"GUNICORN_GRACEFUL_TIMEOUT": graceful} if graceful else {}))
    shown = run([str(BIN / "python"), "manage.py", "show_config"], env=env).stdout
    row = next(line for line in shown.splitlines() if line.startswith("gunicorn.graceful_timeout "))
    found = re.fullmatch(r"gunicorn.graceful_timeout +(\d+) .*Gunicorn's graceful_timeout (\d+) .*", row)
    assert found, row
    drain, gunicorns = found.groups()
    assert drain == (graceful or "30") and gunicorns == print_config(env)["graceful_timeout"]


def test_manage_py_reports_a_bad_value_in_one_line(tmp_path: Path) -> None:
    env = base_environ(tmp_path, GUNICORN_TIMEOUT="soon")
    result = run([str(BIN / "python"), "manage.py", "show_config"], env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "configuration error: GUNICORN_TIMEOUT='soon' is not a whole number (allowed: 1..3600)"
    )


def test_show_config_marks_every_missing_required_variable(tmp_path: Path) -> None:
    env = base_environ(tmp_path, DJANGO_ENV="production", GUNICORN_WORKERS="3")
    for variable in ("DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DATABASE_URL", "DJANGO_PUBLIC_BASE_URL"):
        env.pop(variable, None)
    result = run([str(BIN / "python"), "manage.py", "show_config"], env=env)
    assert result.returncode == 1
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    for key, variable in (("secret_key", "DJANGO_SECRET_KEY"), ("allowed_hosts", "DJANGO_ALLOWED_HOSTS"),
                          ("database_url", "DATABASE_URL"), ("public_base_url", "DJANGO_PUBLIC_BASE_URL")):
        assert rows[key][:2] == ["MISSING", variable], result.stdout
        assert f"{variable} is required in the production layer and is not set" in result.stderr
    assert rows["gunicorn.workers"] == ["3", "env", "GUNICORN_WORKERS"]
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
