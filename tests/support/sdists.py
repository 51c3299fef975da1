"""Source distributions of installed packages, for running their own test suites against the project.

`sdist_tree("django", "5.2.20", ("tests/",))` downloads the sdist once from PyPI (`pip download
--no-binary :all: --no-deps`) into build/sdists/ and extracts the members under the given prefixes
into build/sdist-trees/<name>-<version>/, which it returns.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "build"
DOWNLOAD_TIMEOUT = 300


def _sdist_file(name: str, version: str) -> Path | None:
    # PyPI's file names normalise the project name (PEP 625: lower case, "_" for "-"); older ones do not.
    wanted = re.sub(r"[-_.]+", "_", name).lower()
    for path in (CACHE / "sdists").glob("*.tar.gz"):
        stem = path.name.removesuffix(".tar.gz")
        project, _, found = stem.rpartition("-")
        if re.sub(r"[-_.]+", "_", project).lower() == wanted and found == version:
            return path
    return None


def sdist_tree(name: str, version: str, prefixes: tuple[str, ...]) -> Path:
    """The sdist of `name`==`version`, its members under `prefixes` extracted (on first use)."""
    target = CACHE / "sdist-trees" / f"{name}-{version}"
    if target.is_dir():
        return target
    sdist = _sdist_file(name, version)
    if sdist is None:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
             f"{name}=={version}", "--dest", str(CACHE / "sdists")],
            check=True, timeout=DOWNLOAD_TIMEOUT,
        )
        sdist = _sdist_file(name, version)
        if sdist is None:
            raise RuntimeError(f"pip downloaded no sdist of {name}=={version} into {CACHE / 'sdists'}")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Extracted beside the target and renamed into place: an interrupted run leaves no half tree.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch, tarfile.open(sdist) as archive:
        root = archive.getmembers()[0].name.split("/", 1)[0]
        members = [member for member in archive.getmembers()
                   if member.name.startswith(tuple(f"{root}/{prefix}" for prefix in prefixes))]
        archive.extractall(scratch, members=members, filter="data")
        (Path(scratch) / root).rename(target)
    return target
