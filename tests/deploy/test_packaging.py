"""What `pip install .` and the image ship: the server's packages, never the development tools."""

from __future__ import annotations

import ast

from setuptools.config.setupcfg import read_configuration

from devtools.processes import REPO

SHIPPED = ("coffee_payment", "payments")
DEVELOPMENT = ("devtools", "tests", "bench")


def test_a_wheel_carries_the_server_packages_and_no_development_tools() -> None:
    packages = set(read_configuration(REPO / "setup.cfg")["options"]["packages"])
    assert {*SHIPPED, "payments.migrations", "coffee_payment.management.commands"} <= packages
    assert {package for package in packages if package.split(".")[0] not in SHIPPED} == set()


def test_shipped_code_imports_no_development_tool() -> None:
    """The image has no devtools/: an import of it from shipped code would fail only there."""
    imports = []
    for path in sorted(path for package in SHIPPED for path in (REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            imports += [f"{path.relative_to(REPO)}: {name}" for name in names if name.split(".")[0] in DEVELOPMENT]
    assert imports == []
