"""deploy/container/entrypoint.sh with stand-ins for python and gunicorn: what it runs, in which
order, under which settings layer, and that the server replaces the script (exec)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.processes import REPO

ENTRYPOINT = REPO / "deploy" / "container" / "entrypoint.sh"
# Each stand-in records its name, arguments, DJANGO_ENV and pid; `manage.py migrate` fails on request.
STUB = """#!/bin/sh
echo "{name} $* DJANGO_ENV=$DJANGO_ENV pid=$$" >> "$CALLS"
if [ "$2" = migrate ] && [ -n "${{FAIL_MIGRATE:-}}" ]; then exit 3; fi
"""


@dataclass
class Run:
    returncode: int
    pid: int
    stderr: str
    calls: list[str]


@pytest.fixture
def entrypoint(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "gunicorn"):
        (bin_dir / name).write_text(STUB.format(name=name))
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"

    def run(*args: str, **env: str) -> Run:
        environ = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), **env}
        process = subprocess.Popen(
            [str(ENTRYPOINT), *args], env=environ, stderr=subprocess.PIPE, text=True
        )
        _, stderr = process.communicate(timeout=10)
        lines = calls.read_text().splitlines() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return Run(process.returncode, process.pid, stderr, lines)

    return run


def test_production_is_the_default_and_gunicorn_replaces_the_script(entrypoint) -> None:
    run = entrypoint()
    assert run.returncode == 0
    assert run.calls == [f"gunicorn -c config/gunicorn.py DJANGO_ENV=production pid={run.pid}"]


@pytest.mark.parametrize("run_mode", ["production", ""])
def test_run_mode_production_or_empty_runs_gunicorn(entrypoint, run_mode: str) -> None:
    assert entrypoint(RUN_MODE=run_mode).calls[0].startswith("gunicorn -c config/gunicorn.py ")


def test_development_runs_runserver_on_gunicorn_port_in_the_development_layer(entrypoint) -> None:
    run = entrypoint(RUN_MODE="development", GUNICORN_PORT="9000")
    assert run.calls == [f"python manage.py runserver 0.0.0.0:9000 DJANGO_ENV=development pid={run.pid}"]
    assert entrypoint(RUN_MODE="development").calls[0].startswith("python manage.py runserver 0.0.0.0:8000 ")


def test_an_explicit_django_env_wins_over_the_run_mode(entrypoint) -> None:
    assert "DJANGO_ENV=testing" in entrypoint(RUN_MODE="development", DJANGO_ENV="testing").calls[0]


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_run_migrations_migrates_before_the_server_starts(entrypoint, value: str) -> None:
    run = entrypoint(RUN_MIGRATIONS=value)
    assert [call.split(" DJANGO_ENV")[0] for call in run.calls] == [
        "python manage.py migrate --noinput",
        "gunicorn -c config/gunicorn.py",
    ]


@pytest.mark.parametrize("value", ["", "0", "false", "off"])
def test_migrations_are_not_run_unless_asked(entrypoint, value: str) -> None:
    assert len(entrypoint(RUN_MIGRATIONS=value).calls) == 1


def test_a_failed_migration_stops_the_start(entrypoint) -> None:
    run = entrypoint(RUN_MIGRATIONS="1", FAIL_MIGRATE="1")
    assert run.returncode == 3
    assert len(run.calls) == 1


def test_arguments_run_instead_of_the_server(entrypoint) -> None:
    run = entrypoint("python", "manage.py", "migrate", "--noinput", RUN_MIGRATIONS="1")
    assert run.calls == [f"python manage.py migrate --noinput DJANGO_ENV=production pid={run.pid}"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RUN_MODE": "staging"}, "RUN_MODE='staging' is not a run mode (allowed: production, development)"),
        ({"RUN_MODE": "Production"}, "RUN_MODE='Production' is not a run mode (allowed: production, development)"),
        (
            {"RUN_MIGRATIONS": "maybe"},
            "RUN_MIGRATIONS='maybe' is not a boolean (allowed: 1/0, true/false, yes/no, on/off)",
        ),
    ],
)
def test_bad_values_are_refused_with_one_line(entrypoint, env: dict[str, str], message: str) -> None:
    run = entrypoint("python", "manage.py", "check", **env)
    assert (run.returncode, run.stderr, run.calls) == (1, f"configuration error: {message}\n", [])
