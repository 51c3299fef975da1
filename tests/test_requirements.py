"""The locks in requirements/ still satisfy what setup.cfg and requirements/*.in ask for, pin every
package exactly with its hashes, and agree with each other (`make lock` rewrites them)."""

from __future__ import annotations

import configparser
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from devtools.processes import REPO

REQUIREMENTS = REPO / "requirements"
# Each lock: what it must satisfy (setup.cfg's install_requires, the extras, requirements/*.in).
LOCKS = {
    "app.lock": ("install_requires", "build.in"),
    "test.lock": ("install_requires", "test", "build.in"),
    "bench.lock": ("install_requires", "test", "bench", "build.in"),
    "checkov.lock": ("checkov.in",),
    "kubectl.lock": ("kubectl.in",),
    "uv.lock": ("uv.in",),
}
# The environments a lock is for: Python 3.11 on the machines and in the image.
ENVIRONMENTS = [{"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux",
                 "platform_system": "Linux", "platform_machine": machine, "implementation_name": "cpython",
                 "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
                for machine in ("x86_64", "aarch64")]
_PIN = re.compile(r"^(?P<requirement>[A-Za-z0-9][^\s\\]*==[^\s\\;]+(?:\s*;[^\\]+)?)\s*\\?$")


def wanted(source: str) -> list[Requirement]:
    """The requirements of setup.cfg's install_requires, one of its extras, or a requirements/*.in file."""
    if source.endswith(".in"):
        lines = (REQUIREMENTS / source).read_text().splitlines()
    else:
        setup = configparser.ConfigParser()
        setup.read(REPO / "setup.cfg")
        lines = (setup["options"]["install_requires"] if source == "install_requires"
                 else setup["options.extras_require"][source]).splitlines()
    return [Requirement(line) for line in (line.split("#")[0].strip() for line in lines) if line]


def pins(lock: str) -> dict[str, list[tuple[Requirement, int]]]:
    """Package -> its pins (a universal lock may pin one per platform marker), each with its hash count."""
    found: dict[str, list[tuple[Requirement, int]]] = {}
    current: list[tuple[Requirement, int]] | None = None
    for line in (REQUIREMENTS / lock).read_text().splitlines():
        if match := _PIN.match(line):
            requirement = Requirement(match["requirement"])
            current = found.setdefault(canonicalize_name(requirement.name), [])
            current.append((requirement, 0))
        elif line.strip().startswith("--hash=sha256:") and current:
            requirement, hashes = current[-1]
            current[-1] = (requirement, hashes + 1)
    return found


def pinned_version(pin: Requirement) -> Version:
    (specifier,) = pin.specifier
    assert specifier.operator == "==", pin
    return Version(specifier.version)


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_each_lock_pins_what_its_sources_ask_for_at_an_allowed_version(lock: str) -> None:
    locked = pins(lock)
    failures = []
    for requirement in (r for source in LOCKS[lock] for r in wanted(source)):
        for environment in ENVIRONMENTS:
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            applying = [pin for pin, _ in locked.get(canonicalize_name(requirement.name), [])
                        if not pin.marker or pin.marker.evaluate(environment)]
            if not applying:
                failures.append(f"{requirement} is not in requirements/{lock} ({environment['platform_machine']})")
            failures += [f"requirements/{lock} pins {pin}, which {requirement} does not allow: run `make lock`"
                         for pin in applying if not requirement.specifier.contains(pinned_version(pin), prereleases=True)]
    assert sorted(set(failures)) == []


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_pin_is_exact_and_hashed(lock: str) -> None:
    locked = pins(lock)
    assert locked
    assert [f"{pin}" for entries in locked.values() for pin, hashes in entries if hashes == 0] == []
    for entries in locked.values():
        for pin, _ in entries:
            pinned_version(pin)


def test_a_package_has_one_version_in_every_lock_of_the_project() -> None:
    """The test and bench locks are compiled under the app lock's constraints (`make lock`)."""
    versions: dict[tuple[str, str], set[Version]] = {}
    for lock in ("app.lock", "test.lock", "bench.lock", "kubectl.lock"):
        for name, entries in pins(lock).items():
            for environment in ENVIRONMENTS:
                versions.setdefault((name, environment["platform_machine"]), set()).update(
                    pinned_version(pin) for pin, _ in entries if not pin.marker or pin.marker.evaluate(environment))
    assert {key: found for key, found in versions.items() if len(found) > 1} == {}


def test_the_locked_build_tools_are_the_projects_build_backend() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert sorted(map(str, wanted("build.in"))) == sorted(map(str, map(Requirement, pyproject["build-system"]["requires"])))


def test_every_install_uses_a_lock_with_its_hashes() -> None:
    """The image, the Makefile's venvs and .ci/run install from requirements/*.lock only."""
    sources = {path: (REPO / path).read_text() for path in ("Dockerfile", "Makefile", ".ci/run")}
    installs = [(path, line.strip()) for path, text in sources.items() for line in text.splitlines()
                if re.search(r"pip install", line) and not line.lstrip().startswith("#")]
    assert installs
    unlocked = [(path, line) for path, line in installs
                if "--require-hashes" not in line and "LOCKED_INSTALL" not in line and "--no-deps" not in line]
    assert unlocked == []
    assert "requirements/app.lock" in sources["Dockerfile"]
    assert Path(REPO / ".dockerignore").read_text().count("!requirements/app.lock") == 1
