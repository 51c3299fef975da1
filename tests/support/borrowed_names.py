"""What the project's code borrows from other packages, read from its source with `ast`.

A use (`Use.kind`) is "private": another package's `_name` (not a dunder), imported, read off an
object not ours, or a parent's used by a subclass; "inherited": any parent's name a subclass of
another package's class (not a documented extension base) uses or overrides; "import": a name
imported from another package. Named "module:Qualname.attr" where the owner is known, else ".attr".
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

OWN_PACKAGES = frozenset({"coffee_payment", "payments", "config", "devtools"})
ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "hasattr", "setattr", "delattr"})


@dataclass(frozen=True)
class Use:
    path: str
    line: int
    kind: str
    name: str
    # For a use by a subclass of a foreign class: our class, "module:Qualname".
    subclass: str = ""

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind} {self.name}"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_foreign(module: str) -> bool:
    """Another package's module, not the standard library's."""
    top = module.split(".")[0]
    return top not in OWN_PACKAGES and top not in sys.stdlib_module_names


def attribute_named(node: ast.AST) -> str | None:
    """The attribute a `getattr(x, "name")` (hasattr, setattr, delattr) call names, if it is one."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ATTRIBUTE_FUNCTIONS
            and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
        return node.args[1].value
    return None


def own_names(trees: Iterable[ast.AST]) -> frozenset[str]:
    """Every name our code defines: functions, classes, assigned names and attributes set on `self`."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id == "self"):
                names.add(node.attr)
    return frozenset(names)


@cache
def _assigned_on_self(cls: type) -> frozenset[str]:
    """Attributes a class's own methods set on `self` (instance attributes a getattr cannot see)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return frozenset()
    return frozenset(
        node.attr for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name) and node.value.id == "self"
    )


def owner_of(bases: Iterable[type], attr: str) -> type | None:
    """The first foreign class of the bases' MROs that defines `attr` (or sets it on self), if any."""
    for base in bases:
        for cls in base.__mro__:
            if cls is object or not is_foreign(cls.__module__):
                continue
            if attr in vars(cls) or attr in vars(cls).get("__annotations__", {}) or attr in _assigned_on_self(cls):
                return cls
    return None


def qualified(cls: type, attr: str) -> str:
    return f"{cls.__module__}:{cls.__qualname__}.{attr}"


class FileScan:
    """The uses of one module's source."""

    def __init__(self, path: str, tree: ast.Module, *, own: frozenset[str],
                 project: dict[str, tuple[str, ast.ClassDef]], extension_bases: tuple[type, ...]) -> None:
        self.path, self.tree, self.own, self.project = path, tree, own, project
        self.extension_bases = extension_bases
        # Local name -> (foreign module, imported name or None for the module itself).
        self.imported: dict[str, tuple[str, str | None]] = {}

    def uses(self) -> Iterator[Use]:
        yield from self.imports()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ClassDef):
                yield from self.subclass_uses(node)
            yield from self._expression_uses(node)

    def _use(self, node: ast.AST, kind: str, name: str, path: str | None = None, subclass: str = "") -> Use:
        return Use(path or self.path, getattr(node, "lineno", 0), kind, name, subclass)

    def imports(self) -> Iterator[Use]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and is_foreign(node.module):
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = (node.module, alias.name)
                    yield self._use(node, "import", f"{node.module}:{alias.name}")
                    if is_private(alias.name) or any(map(is_private, node.module.split("."))):
                        yield self._use(node, "private", f"{node.module}:{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if is_foreign(alias.name):
                        # `import a.b` binds `a`; `import a.b as c` binds `a.b`.
                        module = alias.name if alias.asname else alias.name.split(".")[0]
                        self.imported[alias.asname or module] = (module, None)
                        yield self._use(node, "import", alias.name)
                        if any(map(is_private, alias.name.split("."))):
                            yield self._use(node, "private", alias.name)

    def _resolve(self, expression: ast.expr) -> Any:
        """The foreign object an expression of imported names and attributes stands for, or None."""
        if isinstance(expression, ast.Name) and expression.id in self.imported:
            module, name = self.imported[expression.id]
            value = importlib.import_module(module)
            if name is None or hasattr(value, name):
                return value if name is None else getattr(value, name)
            return importlib.import_module(f"{module}.{name}")
        if isinstance(expression, ast.Attribute):
            value = self._resolve(expression.value)
            return None if value is None else getattr(value, expression.attr, None)
        return None

    def imported_path(self, expression: ast.expr) -> str:
        """"module:Name.attr" for an expression of imported names, as it was imported."""
        if isinstance(expression, ast.Name):
            module, name = self.imported[expression.id]
            return module if name is None else f"{module}:{name}"
        assert isinstance(expression, ast.Attribute)
        head = self.imported_path(expression.value)
        return f"{head}{'.' if ':' in head else ':'}{expression.attr}"

    def _class_chain(self, node: ast.ClassDef, path: str,
                     seen: frozenset[str] = frozenset()) -> tuple[list[tuple[str, ast.ClassDef]], list[type]]:
        """Our classes in `node`'s bases (itself first, with their files) and the foreign classes they name."""
        ours, foreign = [(path, node)], []
        for base in node.bases:
            if isinstance(base, ast.Subscript):
                base = base.value
            resolved = self._resolve(base)
            if isinstance(resolved, type):
                foreign.append(resolved)
            elif isinstance(base, ast.Name) and base.id in self.project and base.id not in seen:
                base_path, base_node = self.project[base.id]
                more_ours, more_foreign = self._class_chain(base_node, base_path, seen | {node.name})
                ours += more_ours
                foreign += more_foreign
        return ours, foreign

    def subclass_uses(self, node: ast.ClassDef) -> Iterator[Use]:
        ours, foreign = self._class_chain(node, self.path)
        foreign = [cls for cls in foreign if is_foreign(cls.__module__)]
        if not foreign:
            return
        internal = not any(issubclass(cls, self.extension_bases) for cls in foreign)
        ours_name = f"{module_name(self.path)}:{node.name}"
        for path, body in ours:
            for item in ast.walk(body):
                attr = None
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item in body.body:
                    attr = item.name  # an override
                elif isinstance(item, (ast.Assign, ast.AnnAssign)) and item in body.body:
                    targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                    for target in targets:  # a class attribute overridden
                        if (isinstance(target, ast.Name) and (internal or is_private(target.id))
                                and (owner := owner_of(foreign, target.id))):
                            yield self._use(item, "private" if is_private(target.id) else "inherited",
                                            qualified(owner, target.id), path, ours_name)
                    continue
                elif ((name := attribute_named(item)) is not None and isinstance(item.args[0], ast.Name)
                      and item.args[0].id == "self"):
                    attr = name
                elif isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) and item.value.id == "self":
                    attr = item.attr
                elif (isinstance(item, ast.Attribute) and isinstance(item.value, ast.Call)
                      and isinstance(item.value.func, ast.Name) and item.value.func.id == "super"):
                    attr = item.attr
                if attr is None or (attr.startswith("__") and attr.endswith("__")):
                    continue
                owner = owner_of(foreign, attr)
                if owner is None:
                    continue
                if is_private(attr):
                    yield self._use(item, "private", qualified(owner, attr), path, ours_name)
                elif internal:
                    yield self._use(item, "inherited", qualified(owner, attr), path, ours_name)

    def _expression_uses(self, node: ast.AST) -> Iterator[Use]:
        attr, target = None, None
        if isinstance(node, ast.Attribute):
            attr, target = node.attr, node.value
        elif (name := attribute_named(node)) is not None:
            attr, target = name, node.args[0]  # type: ignore[attr-defined]
        if attr is None or target is None:
            return
        resolved = self._resolve(target)
        if isinstance(resolved, ModuleType) and is_foreign(resolved.__name__):
            # An attribute of a foreign module: an import by another spelling.
            if not isinstance(vars(resolved).get(attr), ModuleType):
                yield self._use(node, "import", f"{resolved.__name__}:{attr}")
            if is_private(attr):
                yield self._use(node, "private", f"{resolved.__name__}:{attr}")
            return
        if isinstance(resolved, type) and is_foreign(resolved.__module__) and not is_private(attr):
            # A foreign class's attribute read off the class: imported by another spelling.
            yield self._use(node, "import", f"{self.imported_path(target)}.{attr}")
            return
        if not is_private(attr) or attr in self.own:
            return
        on_self = isinstance(target, ast.Name) and target.id in {"self", "cls"}
        on_super = isinstance(target, ast.Call) and isinstance(target.func, ast.Name) and target.func.id == "super"
        if on_self or on_super:
            return  # our own class's, or named with its owner by subclass_uses
        if isinstance(resolved, type) and (owner := owner_of([resolved], attr)) is not None:
            yield self._use(node, "private", qualified(owner, attr))
        else:
            yield self._use(node, "private", f".{attr}")


def module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def project_files(root: Path) -> list[Path]:
    return sorted(path for package in sorted(OWN_PACKAGES) for path in (root / package).rglob("*.py"))


def borrowed_uses(sources: dict[str, str], *, extension_bases: tuple[type, ...] = ()) -> list[Use]:
    """Every use of another package's names in `sources` (path -> source text)."""
    trees = {path: ast.parse(text, filename=path) for path, text in sources.items()}
    classes = {node.name: (path, node) for path, tree in trees.items()
               for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    # A class of the module itself before one of the same name elsewhere.
    projects = {path: classes | {node.name: (path, node) for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
                for path, tree in trees.items()}
    # A parent's attribute a subclass sets is the parent's, not ours, wherever else it is used.
    inherited = set()
    for path, tree in trees.items():
        scan = FileScan(path, tree, own=frozenset(), project=projects[path], extension_bases=extension_bases)
        list(scan.imports())
        inherited |= {use.name.rpartition(".")[2] for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                      for use in scan.subclass_uses(node)}
    own = own_names(trees.values()) - inherited
    found = []
    for path, tree in trees.items():
        scan = FileScan(path, tree, own=own, project=projects[path], extension_bases=extension_bases)
        found += scan.uses()
    return found
