"""uvicorn-worker's and uvicorn's own tests against the project's worker and HTTP protocol.

    python -m tests.support.uvicorn_suites worker    # uvicorn-worker's tests/test_workers.py
    python -m tests.support.uvicorn_suites protocol  # uvicorn's tests/protocols/test_http.py

Each suite comes from the sdist of the installed version (tests/support/sdists.py) and runs with
pytest in a child process, from the sdist's tree (its `tests` package, its pytest settings):

- worker: `uvicorn_worker.UvicornWorker` is coffee_payment.workers.DrainingUvicornWorker before the
  test module imports it, so its `worker_class` parameter names ours; the UvicornH11Worker
  parameter is deselected (our worker always serves its own httptools protocol). Gunicorn's SIGUSR2
  test re-executes a master that outlives the test: the child runs in a process group of its own,
  and whatever of it is still alive afterwards is stopped.
- protocol: uvicorn's `HttpToolsProtocol` is LimitedHttpToolsProtocol with the default limits, under
  uvicorn's name, so every test of httptools' protocol tests ours; the h11 and zttp ones are deselected.

Exit status: pytest's; non-zero also when the substitution did not take (no test used ours).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

SUITES: dict[str, tuple[str, str]] = {
    "worker": ("uvicorn-worker", "tests/test_workers.py"),
    "protocol": ("uvicorn", "tests/protocols/test_http.py"),
}
# The suites' own pytest settings, less uvicorn's 8 pytest-xdist workers (not among the test tools) and
# the plugins the suites do not use (pytest-django, pytest-asyncio: uvicorn's async tests run on anyio).
PYTEST_ARGS = ["-p", "no:cacheprovider", "-p", "no:django", "-p", "no:asyncio", "-o", "addopts=", "--strict-markers", "-rfEs",
               "--timeout=60", "-q"]
# Tests left out, by a part of their names (pytest -k), and why.
DESELECTED: dict[str, dict[str, str]] = {
    "worker": {},
    "protocol": {
        "h11": "uvicorn's h11 protocol, not httptools'",
        "zttp": "uvicorn's zttp protocol, not httptools'",
        # The deviation the subclass exists for (docs/architecture.md, "Request limits").
        "test_huge_headers_httptools": "64 KiB of headers pass httptools' protocol unbounded; ours answers 431 "
                                       "past GUNICORN_MAX_HEADER_BYTES (32 KiB)",
    },
}
STOP_GRACE = 5.0


class WorkerSubstitution:
    """Names DrainingUvicornWorker in uvicorn-worker's `worker_class` parameter; drops the H11 one."""

    used = False

    def pytest_configure(self, config: Any) -> None:
        # Here, not at import: pytest warns (an error under the suite's settings) about modules
        # imported before it configured its assertion rewriting.
        import uvicorn_worker

        from coffee_payment.workers import DrainingUvicornWorker

        self.ours, self.stock_h11 = DrainingUvicornWorker, uvicorn_worker.UvicornH11Worker
        uvicorn_worker.UvicornWorker = DrainingUvicornWorker

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        def worker(item: Any) -> Any:
            return item.callspec.params.get("worker_class") if hasattr(item, "callspec") else None

        dropped = [item for item in items if worker(item) is self.stock_h11]
        items[:] = [item for item in items if worker(item) is not self.stock_h11]
        self.used = any(worker(item) is self.ours for item in items)
        config.hook.pytest_deselected(items=dropped)


class ProtocolSubstitution:
    """Makes uvicorn's `HttpToolsProtocol` the project's, with the default limits."""

    used = False

    def pytest_configure(self, config: Any) -> None:
        import uvicorn.protocols.http.httptools_impl as httptools_impl

        from coffee_payment.conf import load_settings
        from coffee_payment.http_protocol import LimitedHttpToolsProtocol
        from coffee_payment.workers import LIVENESS_PATHS

        limits = load_settings(environ={"DJANGO_ENV": "testing"}).server
        substitution = self

        class HttpToolsProtocol(LimitedHttpToolsProtocol):
            """The worker's protocol with its default limits, under the name uvicorn's tests know."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                substitution.used = True
                super().__init__(*args, max_header_bytes=limits.max_header_bytes,
                                 header_timeout=limits.header_timeout, unlimited_paths=LIVENESS_PATHS, **kwargs)

        httptools_impl.HttpToolsProtocol = HttpToolsProtocol  # type: ignore[misc]

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        # uvicorn's MockTransport lacks asyncio's can_write_eof(); as a TLS transport's, it answers
        # False, and the protocol closes at once, as uvicorn's does, instead of lingering.
        for module in {item.module for item in items if hasattr(item, "module")}:
            transport = getattr(module, "MockTransport", None)
            if transport is not None and not hasattr(transport, "can_write_eof"):
                transport.can_write_eof = lambda self: False


def run_child(suite: str, tree: Path) -> int:
    """In the child, in the sdist's tree: substitute the project's class, run pytest."""
    import pytest

    plugin = WorkerSubstitution() if suite == "worker" else ProtocolSubstitution()
    left_out = DESELECTED[suite]
    for name, reason in left_out.items():
        print(f"uvicorn_suites: deselected *{name}*: {reason}", flush=True)
    selection = ["-k", " and ".join(f"not {name}" for name in left_out)] if left_out else []
    status = pytest.main([*PYTEST_ARGS, *selection, SUITES[suite][1]], plugins=[plugin])
    if status == 0 and not plugin.used:
        print(f"uvicorn_suites: no test of the {suite} suite used the project's class", file=sys.stderr)
        return 1
    return int(status)


def _group_members(group: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # the fields after the command: state, ppid, pgrp
            members.append(int(stat.parent.name))
    return members


def _group_stop(group: int) -> int:
    """Stop what is left of the child's process group; how many processes were left."""
    left = _group_members(group)
    if left:
        os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while _group_members(group) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_members(group):
            os.killpg(group, signal.SIGKILL)
    return len(left)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the sdist's tree, in the child
    options = parser.parse_args()
    if options.child:
        return run_child(options.suite, Path(options.child))

    from tests.support.sdists import sdist_tree

    distribution, test_file = SUITES[options.suite]
    installed = version(distribution)
    tree = sdist_tree(distribution, installed, ("tests/", "pyproject.toml"))
    target = {"worker": "coffee_payment.workers.DrainingUvicornWorker",
              "protocol": "coffee_payment.http_protocol.LimitedHttpToolsProtocol"}[options.suite]
    print(f"== {distribution} {installed} {test_file} against {target} ==", flush=True)
    # Run as a script from the sdist's tree, so that `tests` is the sdist's package, not ours. The
    # testing layer: the worker reads the settings (its limits) in the Gunicorn processes the tests start.
    # uvicorn-worker's tests start `gunicorn` from PATH: this venv's.
    environ = {**os.environ, "DJANGO_ENV": "testing",
               "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    environ.pop("DJANGO_SETTINGS_MODULE", None)
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), options.suite, "--child", str(tree)],
                             cwd=tree, env=environ, start_new_session=True)
    try:
        status = child.wait()
    finally:
        left = _group_stop(child.pid)
    if left:
        print(f"uvicorn_suites: stopped {left} process(es) the suite left running", file=sys.stderr)
    print(f"uvicorn_suites: {options.suite} suite took {time.monotonic() - started:.0f} s", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
