"""README.md and PROJECT.md stay true to the code (R5)."""

from __future__ import annotations

import re

import pytest

from coffee_payment.conf import SERVER_INT_SETTINGS, VARIABLES, load_settings
from devtools.processes import REPO

README = (REPO / "README.md").read_text()
PROJECT = (REPO / "PROJECT.md").read_text()


def gunicorn_table() -> dict[str, list[str]]:
    """Rows of README's "Gunicorn variables" table: variable -> [description, default, allowed]."""
    section = README.split("### Gunicorn variables", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and (name := re.fullmatch(r"`(GUNICORN_\w+)`", cells[0])):
            rows[name.group(1)] = cells[1:]
    return rows


@pytest.mark.parametrize(
    ("criterion", "variable"),
    [("R5.2", "GUNICORN_WORKERS"), ("R5.3", "GUNICORN_PORT"), ("R5.4", "GUNICORN_TIMEOUT"),
     ("R5.5", "GUNICORN_MAX_REQUESTS"), ("R5.6", "GUNICORN_MAX_REQUESTS_JITTER")],
)
def test_r5_1_readme_table_documents_each_variable_with_its_real_default(criterion: str, variable: str) -> None:
    """R5.1-R5.6: a row with a description and the default the settings loader really applies."""
    row = gunicorn_table()[variable]
    description, default = row[0], row[1]
    assert len(description) > 10, criterion
    production = load_settings(environ={"DJANGO_ENV": "production", "DJANGO_SECRET_KEY": "k" * 40 + "0123456789",
                                        "DJANGO_ALLOWED_HOSTS": "h", "DATABASE_URL": "sqlite://",
                                        "DATABASE_ALLOW_SQLITE": "true", "DJANGO_PUBLIC_BASE_URL": "https://h"})
    real = getattr(production.server, VARIABLES[variable].removeprefix("gunicorn."))
    assert default.startswith(f"`{real}`"), (criterion, default, real)


def test_readme_table_lists_every_server_variable_with_its_allowed_range() -> None:
    table = gunicorn_table()
    assert set(table) == {v for v in VARIABLES if v.startswith("GUNICORN_")}
    for setting in SERVER_INT_SETTINGS:
        assert table[setting.variable][2] == setting.allowed


@pytest.mark.parametrize(
    ("criterion", "phrases"),
    [
        ("R5.7", ["Process model", "Container"]),
        ("R5.8", ["Gunicorn master", "UvicornWorker", "uvicorn-worker"]),
        ("R5.9", ["SIGTERM", "SIGINT", "GUNICORN_GRACEFUL_TIMEOUT"]),
        ("R5.10", ["terminationGracePeriodSeconds", "preStop", "readiness"]),
    ],
)
def test_r5_7_project_md_covers_the_deployment_architecture(criterion: str, phrases: list[str]) -> None:
    """R5.7-R5.10: PROJECT.md describes architecture, the Gunicorn + Uvicorn setup, shutdown, Kubernetes."""
    missing = [phrase for phrase in phrases if phrase not in PROJECT]
    assert not missing, (criterion, missing)


def test_project_md_state_diagram_is_the_transition_table() -> None:
    """PROJECT.md's Mermaid diagram of the order states has exactly the transitions of TRANSITIONS."""
    from payments.models import FINAL_STATUSES, TRANSITIONS

    diagram = PROJECT.split("```mermaid\nstateDiagram-v2\n", 1)[1].split("```", 1)[0]
    edges = set(re.findall(r"^\s*(\w+) --> (\w+)", diagram, flags=re.MULTILINE))
    drawn = {(source, target) for source, target in edges if "[*]" not in (source, target) and source != "*"}
    assert drawn == {(source, target) for source, targets in TRANSITIONS.items() for target in targets}
    ends = set(re.findall(r"^\s*(\w+) --> \[\*\]", diagram, flags=re.MULTILINE))
    assert ends == set(FINAL_STATUSES)
