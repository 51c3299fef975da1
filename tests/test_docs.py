"""README.md, PROJECT.md and docs/ stay true to the code, linked and short (R5)."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from devtools.processes import REPO

README = REPO / "README.md"
PROJECT = REPO / "PROJECT.md"
DOCS = REPO / "docs"
DOCUMENTS = [README, PROJECT, *sorted(DOCS.glob("*.md"))]

# Word limits (docs/development.md, "Docs"): README in all; the prose of every document together,
# and every word of them, tables and code included.
README_WORDS = 1500
PROSE_WORDS = 6000
ALL_WORDS = 10_000


def loader_view() -> tuple[set[str], dict[str, tuple[object, str | None]]]:
    """What the settings loader knows: every variable it reads, and for each GUNICORN_ variable its
    production default and allowed range (None where it is not a whole number). The only place the
    docs tests use the loader's API."""
    from coffee_payment.conf import VARIABLES, load_settings
    from coffee_payment.conf_declarations import DECLARED

    production = load_settings(environ={"DJANGO_ENV": "production", "DJANGO_SECRET_KEY": "k" * 40 + "0123456789",
                                        "DJANGO_ALLOWED_HOSTS": "h", "DATABASE_URL": "sqlite://",
                                        "DATABASE_ALLOW_SQLITE": "true", "DJANGO_PUBLIC_BASE_URL": "https://h"})
    allowed = {setting.variable: setting.kind.allowed for setting in DECLARED}
    gunicorn = {
        variable: (getattr(production.server, key.removeprefix("gunicorn.")), allowed.get(variable))
        for variable, key in VARIABLES.items()
        if variable.startswith("GUNICORN_")
    }
    return set(VARIABLES), gunicorn


def split_words(text: str) -> tuple[int, int]:
    """(words of prose, words of tables and fenced code blocks). A table is its `|` lines; a word is
    a whitespace-separated token with a letter or digit in it (so `|` and `#` are not words)."""
    prose, rest, fenced = [], [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            rest.append(line)
        elif fenced or line.lstrip().startswith("|"):
            rest.append(line)
        else:
            prose.append(line)
    def words(lines: list[str]) -> int:
        return len(re.findall(r"\S*\w\S*", "\n".join(lines)))

    return words(prose), words(rest)


def table_rows(path: Path, heading: str) -> dict[str, list[str]]:
    """Rows of the first table under `heading` whose first cell is a `VARIABLE`: name -> other cells."""
    section = path.read_text().split(f"{heading}\n", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and (name := re.fullmatch(r"`([A-Z_]+)`", cells[0])):
            rows[name.group(1)] = cells[1:]
    return rows


def test_readme_is_short_and_all_docs_stay_within_their_word_limits() -> None:
    readme_prose, readme_rest = split_words(README.read_text())
    assert readme_prose + readme_rest <= README_WORDS
    counts = [split_words(path.read_text()) for path in DOCUMENTS]
    assert sum(prose for prose, _ in counts) <= PROSE_WORDS
    assert sum(prose + rest for prose, rest in counts) <= ALL_WORDS


def test_word_counts_separate_prose_from_tables_and_code() -> None:
    text = "One two three.\n\n| a | b c |\n|---|---|\n\n```sh\nmake run   # four words\n```\nfour five\n"
    assert split_words(text) == (5, 8)


@pytest.mark.parametrize(
    ("criterion", "variable"),
    [("R5.2", "GUNICORN_WORKERS"), ("R5.3", "GUNICORN_PORT"), ("R5.4", "GUNICORN_TIMEOUT"),
     ("R5.5", "GUNICORN_MAX_REQUESTS"), ("R5.6", "GUNICORN_MAX_REQUESTS_JITTER")],
)
def test_r5_1_readme_table_documents_each_variable_with_its_real_default(criterion: str, variable: str) -> None:
    """R5.1-R5.6: README's row has a description, the default the loader applies and its range."""
    description, default, allowed = table_rows(README, "The Gunicorn essentials:")[variable]
    real_default, real_allowed = loader_view()[1][variable]
    assert len(description) > 10, criterion
    assert default.startswith(f"`{real_default}`"), (criterion, default, real_default)
    assert allowed == real_allowed, criterion


def test_configuration_doc_lists_every_variable_the_loader_reads() -> None:
    variables, _ = loader_view()
    text = (DOCS / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", text, flags=re.MULTILINE))
    assert variables <= documented, sorted(variables - documented)


def test_configuration_doc_gives_every_gunicorn_variable_its_real_default_and_range() -> None:
    _, gunicorn = loader_view()
    table = table_rows(DOCS / "configuration.md", "## Gunicorn variables")
    assert set(table) == set(gunicorn)
    for variable, (_, default, allowed) in table.items():
        real_default, real_allowed = gunicorn[variable]
        # A default may name the variable it follows (GUNICORN_GRACEFUL_TIMEOUT: `GUNICORN_TIMEOUT`).
        follows = re.fullmatch(r"`(GUNICORN_\w+)`", default)
        # An empty list (GUNICORN_FORWARDED_ALLOW_IPS) is documented as "empty".
        shown = "empty" if real_default == () else f"`{real_default}`"
        assert default.startswith(shown) or (follows and gunicorn[follows.group(1)][0] == real_default), (
            variable, default, real_default)
        # A range may add a condition after a comma (`0..65535, not GUNICORN_PORT`).
        assert real_allowed is None or allowed.split(", ")[0] == real_allowed, (variable, allowed, real_allowed)


def documented_rows() -> dict[str, list[str]]:
    """Every variable row of every table in docs/configuration.md: name -> its other cells."""
    text = (DOCS / "configuration.md").read_text()
    headings = re.findall(r"^## .+$", text, flags=re.MULTILINE)
    return {name: cells for heading in headings
            for name, cells in table_rows(DOCS / "configuration.md", heading).items()}


def declared_defaults(setting: Any) -> list[str]:
    """What the row's Default cell must say: the declared default and each operator layer's own value."""
    from coffee_payment.conf_declarations import BY_KEY, DERIVED, REQUIRED

    def shown(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return "empty" if not value else f"`{','.join(value)}`"
        return f"`{str(value).lower()}`" if isinstance(value, bool) else f"`{value:g}`" if isinstance(
            value, float) else f"`{value}`"

    if setting.default is REQUIRED or setting.production_required:
        says = ["required in production"]
    elif setting.default is DERIVED:  # names the setting it follows
        says = [f"`{BY_KEY[key].variable}`" for key in re.findall(r"[a-z_]+\.[a-z_]+", setting.unset_source)]
    else:
        says = ["none" if setting.default == {} else shown(setting.default)]
    layers = tomllib.loads((REPO / "config" / "settings.toml").read_text())
    for layer in ("development", "production"):
        value = layers.get(layer, {})
        for part in setting.key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and not isinstance(value, list):  # a list: its own wording
            says.append(shown(value))
    return says


def test_configuration_doc_gives_every_declared_variable_its_default_layer_values_and_range() -> None:
    """The tables follow the declarations (coffee_payment/conf_declarations.py): a row per variable,
    its Default cell naming the declared default and the development and production layers' values,
    the row giving its range or its choices."""
    from coffee_payment.conf_declarations import DECLARED, LAYER

    rows = documented_rows()
    declared = {setting.variable for setting in (LAYER, *DECLARED)}
    container = table_rows(DOCS / "configuration.md", "## Container variables")  # the entrypoint's, not the loader's
    assert sorted(set(rows) - declared - set(container)) == [], "documented but not declared"
    for setting in (LAYER, *DECLARED):
        if setting.variable is None:
            continue
        assert setting.variable in rows, f"{setting.variable} has no row in docs/configuration.md"
        row = " | ".join(rows[setting.variable])
        default = rows[setting.variable][-2 if len(rows[setting.variable]) == 3 else -1]
        missing = [said for said in declared_defaults(setting) if said not in default]
        assert not missing, (setting.variable, default, missing)
        kind = setting.kind
        if kind.allowed:
            shown = re.escape(kind.allowed.removesuffix(kind.unit))
            assert re.search(rf"(?<![\d.]){shown}(?![\d.])", row), (setting.variable, row, kind.allowed)
        assert [choice for choice in kind.choices if f"`{choice}`" not in row] == [], (setting.variable, row)


@pytest.mark.parametrize(
    ("criterion", "document", "phrases"),
    [
        ("R5.7", "PROJECT.md", ["Gunicorn master", "container", "Kubernetes"]),
        ("R5.8", "PROJECT.md", ["Gunicorn master", "UvicornWorker", "uvicorn-worker"]),
        ("R5.9", "PROJECT.md", ["SIGTERM", "SIGINT", "GUNICORN_GRACEFUL_TIMEOUT"]),
        ("R5.10", "PROJECT.md", ["terminationGracePeriodSeconds", "preStop", "readiness"]),
        ("R5.8", "docs/architecture.md", ["## Process model", "## Stopping and recycling"]),
        ("R5.10", "docs/operations.md", ["## Kubernetes", "### Shutdown timeline", "terminationGracePeriodSeconds"]),
    ],
)
def test_r5_7_the_deployment_architecture_is_documented(criterion: str, document: str, phrases: list[str]) -> None:
    """R5.7-R5.10: PROJECT.md summarises the deployment architecture; docs/ has the details."""
    text = (REPO / document).read_text()
    assert [phrase for phrase in phrases if phrase not in text] == [], criterion


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_reaches_a_file_and_a_heading() -> None:
    broken = []
    for path in DOCUMENTS:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, fragment = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.name}: {target}")
            elif fragment and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.MULTILINE)
                if fragment not in {anchor(heading) for heading in headings}:
                    broken.append(f"{path.name}: {target}")
    assert broken == []


def test_the_state_diagram_is_the_transition_table() -> None:
    """docs/payments.md's Mermaid diagram has exactly the transitions and final states of the models."""
    from payments.models import FINAL_STATUSES, TRANSITIONS

    payments = (DOCS / "payments.md").read_text()
    diagram = payments.split("```mermaid\nstateDiagram-v2\n", 1)[1].split("```", 1)[0]
    edges = set(re.findall(r"^\s*(\w+) --> (\w+)", diagram, flags=re.MULTILINE))
    drawn = {(source, target) for source, target in edges if "[*]" not in (source, target) and source != "*"}
    assert drawn == {(source, target) for source, targets in TRANSITIONS.items() for target in targets}
    ends = set(re.findall(r"^\s*(\w+) --> \[\*\]", diagram, flags=re.MULTILINE))
    assert ends == set(FINAL_STATUSES)


def requirement_rows() -> dict[str, str]:
    """docs/requirements.md: criterion id -> its "Checked by" cell."""
    text = (DOCS / "requirements.md").read_text()
    return dict(re.findall(r"^\| (R\d\.\d+) \| .+? \| (.+) \|$", text, flags=re.MULTILINE))


def cited_ids(text: str) -> set[str]:
    """Criterion ids a text cites, ranges expanded: "R3.2-R3.6" and "R2.6-R2.11" alike."""
    ids = set()
    for major, first, last_major, last in re.findall(r"\bR(\d)\.(\d+)(?:-R?(\d)?\.?(\d+))?", text):
        end = int(last) if last and (not last_major or last_major == major) else int(first)
        ids.update(f"R{major}.{minor}" for minor in range(int(first), end + 1))
    return ids


def test_every_requirement_a_test_cites_is_defined() -> None:
    defined = set(requirement_rows())
    cited = set()
    for path in (REPO / "tests").rglob("*.py"):
        cited |= cited_ids(path.read_text())
    assert cited and cited <= defined, sorted(cited - defined)


def test_every_test_the_requirements_name_exists() -> None:
    test_names = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        tree = ast.parse(path.read_text())
        test_names |= {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    named = {name for cell in requirement_rows().values() for name in re.findall(r"`(test_\w+)`", cell)}
    paths = {path for cell in requirement_rows().values() for path in re.findall(r"`(tests/[\w/]+\.py)`", cell)}
    assert named and named <= test_names, sorted(named - test_names)
    assert [path for path in paths if not (REPO / path).exists()] == []
