"""`python -m devtools.postgres`: its command line (the cluster itself runs the PostgreSQL pass)."""

from __future__ import annotations

import subprocess

import pytest

from devtools.processes import BIN, REPO


def postgres_helper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "python"), "-m", "devtools.postgres", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_the_usage_and_what_it_does(flag: str) -> None:
    result = postgres_helper(flag)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: python -m devtools.postgres") and "throwaway PostgreSQL cluster" in result.stdout


@pytest.mark.parametrize(("args", "says"), [(["--halp"], "unknown option '--halp'"), ([], "no command given"),
                                            (["--", "no-such-command-here"], "'no-such-command-here' is not a command")])
def test_a_bad_command_line_is_one_message_and_no_cluster(args: list[str], says: str) -> None:
    result = postgres_helper(*args)
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr
