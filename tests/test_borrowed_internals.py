"""Every private or undocumented name the code borrows is in docs/architecture.md's "Borrowed
internals" table, and every name there still exists, with the parameters we use, on the installed
versions: an upgrade that removes or reshapes one fails here, naming it."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterable
from typing import Any

import pytest
from django import forms
from django.apps import AppConfig
from django.contrib import admin
from django.contrib.admin.options import InlineModelAdmin
from django.core.management.base import BaseCommand
from django.db import migrations, models
from django.utils.deprecation import MiddlewareMixin

from devtools.processes import REPO
from tests.support.borrowed_names import Use, borrowed_uses, owner_of, project_files

ARCHITECTURE = REPO / "docs" / "architecture.md"

# Django's documented extension points: what a subclass of these sets or overrides is their API
# (custom list filters, query expressions and migration operations included).
EXTENSION_BASES = (AppConfig, BaseCommand, admin.AdminSite, admin.SimpleListFilter, admin.ModelAdmin,
                   InlineModelAdmin, models.Model, models.Choices, migrations.Migration, forms.Field, forms.Form,
                   MiddlewareMixin, models.QuerySet, admin.RelatedFieldListFilter, models.Func,
                   migrations.operations.base.Operation)
# Underscored names that are documented API: Django's Model _meta API, default manager and
# _state (Model.from_db's documentation), namedtuple's _replace.
DOCUMENTED_PRIVATE = frozenset({"_meta", "_default_manager", "_state", "_replace"})
# Modules whose every name is documented API, and documented names of other modules.
DOCUMENTED_MODULES = frozenset({
    "aiohttp", "asgiref.sync", "dj_database_url", "dynaconf", "httpx", "phonenumbers", "prometheus_client",
    "prometheus_client.core", "prometheus_client.multiprocess", "psycopg", "psycopg_pool", "uvicorn",
    "uvicorn_worker", "django", "django.apps", "django.conf", "django.contrib", "django.contrib.admin",
    "django.contrib.admin.apps", "django.contrib.messages", "django.core", "django.core.cache",
    "django.core.checks", "django.core.exceptions", "django.core.management", "django.core.management.base",
    "django.core.signals", "django.core.validators", "django.core.wsgi", "django.db",
    "django.db.backends.postgresql", "django.db.migrations", "django.db.models", "django.db.models.deletion",
    "django.db.models.functions", "django.db.models.signals", "django.db.backends.signals", "django.db.transaction", "django.dispatch", "django.forms", "django.http",
    "django.shortcuts", "django.template.response", "django.utils", "django.utils.deprecation",
    "django.utils.formats", "django.utils.module_loading", "django.utils.timezone", "django.utils.translation",
    "django.views.decorators.csrf", "django.views.decorators.debug", "django.views.decorators.http",
})
DOCUMENTED_NAMES = frozenset({
    "django.contrib.admin.helpers:ACTION_CHECKBOX_NAME", "django.db.backends.postgresql.base:DatabaseWrapper",
    "django.urls:include", "django.urls:path", "django.urls:resolve", "django.urls:reverse",
    "django.urls:set_script_prefix", "uvicorn.config:Config", "django.utils.functional:lazy",
})
# A name of the table: "module", "module:Qualname.attr", optionally with "(the,parameters,we,pass)";
# "module:Qualname.{a,b(x)}" or "module:{A,B}" stands for several.
NAME = re.compile(r"([\w.]+(?::[\w.]+)?)(?:\(([\w,]*)\))?")
GROUP = re.compile(r"([\w.:]+[:.])\{(.+)\}")


def table_names(text: str) -> dict[str, tuple[str, ...]]:
    """The names in the first cells of the table (name -> the parameters we pass it)."""
    section = text.split("## Borrowed internals\n", 1)[1].split("\n## ", 1)[0]
    names: dict[str, tuple[str, ...]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        for token in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
            group = GROUP.fullmatch(token)
            prefix, items = (group[1], re.findall(r"[^,(]+(?:\([^)]*\))?", group[2])) if group else ("", [token])
            for item in items:
                match = NAME.fullmatch(prefix + item.strip())
                assert match, f"docs/architecture.md, Borrowed internals: {token!r} is not a name"
                names[match[1]] = tuple(match[2].split(",")) if match[2] else ()
    return names


TABLE = table_names(ARCHITECTURE.read_text())


def resolve(name: str) -> Any:
    """The object `name` stands for; an instance attribute (set on self in a method) resolves to
    its class. Raises LookupError saying what is missing."""
    module_name, _, path = name.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"module {module_name} is gone ({exc})") from None
    for part in path.split(".") if path else []:
        if hasattr(value, part):
            value = getattr(value, part)
        elif isinstance(value, type) and owner_of([value], part) is not None:
            value = owner_of([value], part)  # an instance attribute: no object to inspect further
        else:
            raise LookupError(f"{part} is gone from {value!r}")
    return value


def parameter_names(callable_: Any) -> list[str]:
    return [name for name in inspect.signature(callable_).parameters if name not in {"self", "cls"}]


def test_the_table_lists_names_and_the_parameters_we_use() -> None:
    assert len(TABLE) > 100
    assert TABLE["django.dispatch:Signal._live_receivers"] == ("sender",)
    assert "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.transport" in TABLE


@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_listed_name_exists_with_the_parameters_we_use(name: str) -> None:
    try:
        value = resolve(name)
    except LookupError as exc:
        pytest.fail(f"{name} (docs/architecture.md, Borrowed internals): {exc}")
    if TABLE[name]:
        missing = set(TABLE[name]) - set(parameter_names(value))
        assert not missing, f"{name} no longer takes {sorted(missing)}: {inspect.signature(value)}"


def unlisted(uses: Iterable[Use], names: Iterable[str]) -> list[str]:
    """The uses that neither the table nor the documented API covers, as "path:line: kind name"."""
    names = set(names)
    names |= {name.rpartition(".")[0] for name in names if "." in name.partition(":")[2]}  # their classes
    attributes = {name.rpartition(".")[2] for name in names}
    missing = []
    for use in uses:
        if use.kind == "import":
            module = use.name.partition(":")[0]
            covered = module in DOCUMENTED_MODULES or use.name in DOCUMENTED_NAMES or use.name in names
        elif use.name.startswith("."):  # a private attribute of an object of unknown class
            attribute = use.name[1:]
            covered = attribute in DOCUMENTED_PRIVATE or attribute in attributes
        else:
            covered = use.name in names or use.name.rpartition(".")[2] in DOCUMENTED_PRIVATE
        if not covered:
            missing.append(str(use))
    return missing


def project_uses() -> list[Use]:
    return borrowed_uses({str(path.relative_to(REPO)): path.read_text() for path in project_files(REPO)},
                         extension_bases=EXTENSION_BASES)


def test_the_code_borrows_only_listed_names() -> None:
    missing = unlisted(project_uses(), TABLE)
    assert not missing, "not in docs/architecture.md, Borrowed internals:\n" + "\n".join(missing)


def test_overrides_take_the_parameters_of_what_they_override() -> None:
    """A method of ours that overrides a borrowed one is called as uvicorn or Django calls theirs."""
    reshaped, checked = [], 0
    for use in project_uses():
        if not use.subclass:
            continue
        module_name, _, class_name = use.subclass.partition(":")
        ours = getattr(importlib.import_module(module_name), class_name)
        attribute = use.name.rpartition(".")[2]
        owner = resolve(use.name.rpartition(".")[0])
        theirs, mine = inspect.getattr_static(owner, attribute, None), inspect.getattr_static(ours, attribute, None)
        if not callable(theirs) or theirs is mine or not callable(mine):
            continue
        checked += 1
        mine_parameters = inspect.signature(mine).parameters.values()
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in mine_parameters):
            continue
        if parameter_names(mine) != parameter_names(theirs):
            reshaped.append(f"{use.path}:{use.line}: {use.subclass}.{attribute}{inspect.signature(mine)} overrides "
                            f"{use.name}{inspect.signature(theirs)}")
    assert checked >= 15
    assert not reshaped, "\n".join(sorted(set(reshaped)))


SNIPPET = '''
from django.db import connection
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.main import _private_helper


class Ours:
    def __init__(self):
        self._mine = 1

    def read(self, other):
        return other._mine, self._mine


class Protocol(HttpToolsProtocol):
    def on_url(self, url):
        super().on_url(url)
        self._unset_keepalive_if_required()


def signals(signal):
    return signal._live_receivers(None), getattr(connection, "_savepoint_ids"), connection.__class__
'''


def test_the_check_names_a_borrowed_name_the_table_lacks() -> None:
    uses = borrowed_uses({"snippet.py": SNIPPET}, extension_bases=EXTENSION_BASES)
    missing = unlisted(uses, TABLE)
    assert sorted(missing) == [
        "snippet.py:16: inherited uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_url",
        "snippet.py:17: inherited uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_url",
        "snippet.py:22: private ._savepoint_ids",
        "snippet.py:4: import uvicorn.main:_private_helper",
        "snippet.py:4: private uvicorn.main:_private_helper",
    ]
    # Listed, the same code passes; our own `_mine` and the dunder never count.
    assert unlisted(uses, [*TABLE, "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_url",
                           "uvicorn.main:_private_helper", "django.db:connection._savepoint_ids"]) == []
