"""`python -m devtools.test_lanes`: `make test`'s two lanes at once, their output, status and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.processes import REPO

# A lane that says it started, then waits (bounded) for the other lane's sign of life.
WAITS_FOR = "touch {mine}; i=0; while [ ! -e {theirs} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; " \
            "[ -e {theirs} ] && echo {name} saw the other lane"
# A lane that runs until interrupted and says how often it was.
UNTIL_INTERRUPTED = "trap 'echo {name} interrupted; exit 1' INT; touch {mine}; i=0; " \
                    "while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo {name} never interrupted"


def lanes(tmp_path: Path, foreground: str, background: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devtools.test_lanes", "--log", str(tmp_path / "lane.log"),
                           foreground, background], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_the_lanes_run_at_once_and_the_background_lane_is_shown_after_the_foreground(tmp_path: Path) -> None:
    front, back = tmp_path / "front", tmp_path / "back"
    result = lanes(tmp_path, WAITS_FOR.format(mine=front, theirs=back, name="front"),
                   WAITS_FOR.format(mine=back, theirs=front, name="back"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "front saw the other lane\nback saw the other lane\n"
    assert (tmp_path / "lane.log").read_text() == "back saw the other lane\n"


@pytest.mark.parametrize(("foreground", "background", "status"), [
    ("exit 0", "exit 3", 3), ("exit 5", "exit 0", 5), ("exit 5", "exit 3", 5), ("kill -TERM $$", "exit 0", 143),
])
def test_the_status_is_the_first_failing_lanes(tmp_path: Path, foreground: str, background: str, status: int) -> None:
    result = lanes(tmp_path, foreground, background)
    assert result.returncode == status, result.stderr


# Starts the runner with SIGINT at the disposition named by argv[1], whatever this process has.
LAUNCH = ("import os, signal, sys; signal.signal(signal.SIGINT, getattr(signal, sys.argv[1])); "
          "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")


@pytest.mark.parametrize(("signum", "sigint_on_entry"), [
    (signal.SIGINT, "SIG_DFL"), (signal.SIGTERM, "SIG_DFL"),
    (signal.SIGINT, "SIG_IGN"),  # as for a `&` job of a script, or under nohup: the lanes must not inherit it
], ids=["SIGINT", "SIGTERM", "SIGINT-ignored-on-entry"])
def test_ctrl_c_or_sigterm_interrupts_each_lane_once_and_shows_both(tmp_path: Path, signum: int,
                                                                     sigint_on_entry: str) -> None:
    front, back = tmp_path / "front", tmp_path / "back"
    command = [sys.executable, "-c", LAUNCH, sigint_on_entry, "-m", "devtools.test_lanes",
               "--log", str(tmp_path / "lane.log"),
               UNTIL_INTERRUPTED.format(mine=front, name="front"), UNTIL_INTERRUPTED.format(mine=back, name="back")]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as runner:
        try:
            deadline = time.monotonic() + 20
            while not (front.exists() and back.exists()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert front.exists() and back.exists(), "the lanes did not start"
            # As a terminal does: the signal goes to the runner's process group (the lanes have their own).
            os.killpg(runner.pid, signum)
            out, err = runner.communicate(timeout=30)
        finally:
            if runner.poll() is None:
                os.killpg(runner.pid, signal.SIGKILL)
                runner.communicate()
    assert runner.returncode == 130, err
    assert out == "front interrupted\nback interrupted\n"
