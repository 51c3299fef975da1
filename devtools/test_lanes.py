"""`python -m devtools.test_lanes --log FILE FOREGROUND BACKGROUND`: two shell commands at once.

`make test` runs the SQLite pass in the foreground and the PostgreSQL lane beside it: most of the
suite waits on servers, timeouts and restarts rather than on the CPU, so two lanes take about as
long as the longer one. The background lane writes to FILE, shown once the foreground is done (two
pytest sessions' lines interleaved would be unreadable). The exit status is the first failing
lane's; Ctrl-C or SIGTERM stops both, each pytest cleaning up its processes.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from devtools.processes import signal_group

# Longer than any one test's pytest-timeout: a lane told to stop finishes its teardowns first.
STOP_WAIT_SECONDS = 180


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.test_lanes", description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, required=True, help="where the background lane's output goes")
    parser.add_argument("foreground", help="a shell command whose output is shown as it runs")
    parser.add_argument("background", help="a shell command run beside it, its output shown at the end")
    return parser.parse_args(argv)


def stop(lanes: list[subprocess.Popen[bytes]]) -> None:
    """SIGINT to each lane's process group, as a terminal's Ctrl-C; SIGKILL to one that outlasts the wait."""
    running = [lane for lane in lanes if lane.poll() is None]
    for lane in running:
        signal_group(lane.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    for lane in running:
        try:
            lane.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(lane.pid, signal.SIGKILL)
            lane.wait()


def status(code: int) -> int:
    """A shell's exit status for a Popen return code (a signal's -N is 128 + N)."""
    return 128 - code if code < 0 else code


def run(*, log: Path, foreground: str, background: str) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    # A terminal's Ctrl-C or CI's SIGTERM comes to this process, which passes one SIGINT to each
    # lane's session, so that each pytest runs its teardowns. SIGINT's handler is set even when this
    # process started with it ignored (a script's `&` job, nohup): the lanes would inherit that.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with log.open("wb") as output:
        lanes = [subprocess.Popen(["sh", "-c", foreground], stdin=subprocess.DEVNULL, start_new_session=True),
                 subprocess.Popen(["sh", "-c", background], stdin=subprocess.DEVNULL, stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True)]
        try:
            codes = [status(lane.wait()) for lane in lanes]
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the teardowns short
            stop(lanes)
            codes = [130]
    sys.stdout.flush()
    with log.open("rb") as shown:
        shutil.copyfileobj(shown, sys.stdout.buffer)
    sys.stdout.flush()
    return next((code for code in codes if code), 0)


def main(argv: list[str] | None = None) -> int:
    arguments = parse(argv)
    return run(log=arguments.log, foreground=arguments.foreground, background=arguments.background)


if __name__ == "__main__":
    sys.exit(main())
