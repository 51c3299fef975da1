"""Real server processes for tests and the bench: start on a free loopback port, wait, always stop the group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# What config/gunicorn.py uses, and the stock class it subclasses (for comparisons).
DRAINING_WORKER = "coffee_payment.workers.DrainingUvicornWorker"
STOCK_WORKER = "uvicorn_worker.UvicornWorker"


# Provider timeouts and retries that fit a GUNICORN_TIMEOUT of 2 s (the settings loader refuses
# provider waits longer than a request may take): for servers under test that time out that fast.
PROVIDER_WAITS_FOR_2_S = {"PAYMENT_PROVIDER_CONNECT_TIMEOUT": "0.5", "PAYMENT_PROVIDER_READ_TIMEOUT": "1",
                          "PAYMENT_PROVIDER_RETRIES": "0"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_environ(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A clean environment for a child server: no inherited DJANGO_*/GUNICORN_*/DATABASE_URL."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "GUNICORN_")) and key != "DATABASE_URL"
    }
    env.update(
        DJANGO_ENV="testing",
        DATABASE_URL=f"sqlite:///{tmp_path / 'server.sqlite3'}",
        GUNICORN_HOST="127.0.0.1",
        GUNICORN_PORT=str(free_port()),
        # Each server its own: a server empties its metrics directory when it starts.
        GUNICORN_METRICS_DIR=str(tmp_path / "metrics"),
        GUNICORN_METRICS_PORT=str(free_port()),
        HOME=str(tmp_path),
    )
    env.update(overrides)
    # Where the server's customers are sent back from the provider: this server itself.
    env.setdefault("DJANGO_PUBLIC_BASE_URL", f"http://127.0.0.1:{env['GUNICORN_PORT']}")
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    stdout: Path
    stderr: Path
    metrics_port: int = 0  # GUNICORN_METRICS_PORT: where /metrics answers (0: nowhere)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def logs(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def wait_for_log(self, text: str, *, timeout: float = 5.0) -> bool:
        """Whether `text` shows up in the logs within `timeout` seconds (workers log asynchronously)."""
        deadline = time.monotonic() + timeout
        while text not in self.logs():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def worker_pids(self) -> set[int]:
        """Children of the Gunicorn master, read from /proc."""
        pids = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Field 4 (after the parenthesised command name) is the parent pid.
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.process.pid:
                pids.add(int(entry.name))
        return pids

    def wait_for_workers(self, count: int, *, timeout: float = 10.0) -> set[int]:
        """The worker pids once there are `count` (with preload_app the first one may serve before
        the master has forked the last)."""
        deadline = time.monotonic() + timeout
        while len(pids := self.worker_pids()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(pids)} of {count} workers after {timeout} s:\n{self.logs()}")
            time.sleep(0.05)
        return pids

    def wait_until_serving(self, *, timeout: float = 20.0, path: str = "/health") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server did not serve {path} within {timeout} s:\n{self.logs()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # Whatever happened above, leave no worker behind.
        signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def signal_group(pid: int, sig: signal.Signals) -> None:
    """`sig` to the process group `pid` leads, if it is still there."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def gunicorn_command(
    *, args: Sequence[str] = (), app: str | None = None, worker_class: str | None = None
) -> list[str]:
    """`gunicorn -c config/gunicorn.py`, optionally another worker class and another application."""
    command = [str(BIN / "gunicorn"), "-c", "config/gunicorn.py", *args]
    if worker_class is not None:
        command += ["--worker-class", worker_class]
    # Positional, so everything else (worker class, timeouts, hooks) is config/gunicorn.py's.
    return command if app is None else [*command, app]


def worker_class_under_test() -> str | None:
    """TEST_WORKER_CLASS, if set: run the shutdown and recycling tests against another worker class
    (`TEST_WORKER_CLASS=uvicorn_worker.UvicornWorker` shows what the stock worker gets wrong)."""
    return os.environ.get("TEST_WORKER_CLASS") or None


@contextmanager
def serving(
    tmp_path: Path, name: str, command: list[str], *, env: Mapping[str, str], port: int, wait: bool = True,
    metrics_port: int = 0, preexec_fn: Callable[[], None] | None = None,
) -> Iterator[Server]:
    """`command` in its own process group, logs in tmp_path/<name>.out|.err, stopped on exit;
    `preexec_fn` runs in the child before it execs (a resource limit, say)."""
    stdout, stderr = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(command, cwd=REPO, env=dict(env), stdout=out, stderr=err, start_new_session=True,
                                   preexec_fn=preexec_fn)
    server = Server(process=process, port=port, stdout=stdout, stderr=stderr, metrics_port=metrics_port)
    try:
        if wait:
            server.wait_until_serving()
        yield server
    finally:
        server.stop()


@contextmanager
def gunicorn(
    tmp_path: Path,
    *,
    env: Mapping[str, str],
    args: Sequence[str] = (),
    app: str | None = None,
    worker_class: str | None = None,
    command_prefix: Sequence[str] = (),
    wait: bool = True,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[Server]:
    """`gunicorn -c config/gunicorn.py` in its own process group, stopped on exit.

    `command_prefix` must exec gunicorn (not fork it), so the process started is the master.
    """
    command = [*command_prefix, *gunicorn_command(args=args, app=app, worker_class=worker_class)]
    with serving(tmp_path, "gunicorn", command, env=env, port=int(env["GUNICORN_PORT"]), wait=wait,
                 metrics_port=int(env.get("GUNICORN_METRICS_PORT") or 0), preexec_fn=preexec_fn) as server:
        yield server


@contextmanager
def fake_provider(tmp_path: Path, *args: str) -> Iterator[Server]:
    """`python -m devtools.fake_provider` on a free loopback port, stopped on exit."""
    port = free_port()
    command = [str(BIN / "python"), "-m", "devtools.fake_provider", "--port", str(port), *args]
    with serving(tmp_path, "fake-provider", command, env=os.environ, port=port) as server:
        yield server


def run(command: list[str], *, env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, env=dict(env), capture_output=True, text=True, timeout=timeout)
