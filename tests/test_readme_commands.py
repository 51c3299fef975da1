"""Every command of README.md's `sh` blocks works as written, in a fresh clone (issue 11).

The clone reuses the suite's virtualenv (linked as `.venv`, marked installed) instead of installing
again. Servers get free loopback ports through variables the README documents (`PORT`,
`PROVIDER_PORT`, `GUNICORN_PORT`); a `localhost:8000` the README shows means the test's port.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import secrets
import select
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.test_payment_flow import csrf, order_id_of, wait_for_status
from devtools.processes import REPO, Server, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(240),
    # The commands bring their own databases: once, in the SQLite pass, is enough.
    pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="runs in the SQLite pass only"),
]

# Shown in README, not run here, and why.
NOT_RUN = {"make test": "it runs the suite this test belongs to"}
QUICKSTART_SERVER = ".venv/bin/gunicorn -c config/gunicorn.py"
# The Makefile's own variables: a value left in the environment would move the commands.
MAKE_VARIABLES = {"PORT", "PROVIDER_PORT", "BASE_URL", "ARGS", "VENV", "PYTHON", "PYTEST_ARGS"}


def readme_blocks(clone: Path) -> list[list[str]]:
    """The commands of each ```sh block of the clone's README.md, without their trailing comments."""
    blocks = re.findall(r"^```sh\n(.*?)^```", (clone / "README.md").read_text(), flags=re.MULTILINE | re.DOTALL)
    return [[re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines() if line.strip()] for block in blocks]


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh `git clone` of this repository whose `.venv` is the suite's own."""
    if sys.prefix == sys.base_prefix or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout and the suite's virtualenv to reuse")
    directory = tmp_path_factory.mktemp("readme") / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(directory)], check=True, timeout=60)
    venv = directory / ".venv"
    venv.mkdir()
    for entry in Path(sys.prefix).iterdir():
        if not entry.name.startswith(".installed"):
            (venv / entry.name).symlink_to(entry)
    # Newer than the clone's setup.cfg: make sees the venv as installed and leaves the suite's alone.
    for marker in (".installed", ".installed-test"):
        (venv / marker).touch()
    return directory


def environ(home: Path, **variables: str) -> dict[str, str]:
    """A new user's shell: none of the suite's settings or make's, loopback only."""
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "GUNICORN_", "DATABASE_", "PAYMENT_", "ORDER_", "MAKE", "MFLAGS"))
        and key not in MAKE_VARIABLES
    }
    # Each server's metrics port its own, like its PORT: two of the README's servers run at once.
    env.update(HOME=str(home), GUNICORN_HOST="127.0.0.1", GUNICORN_METRICS_PORT=str(free_port()), **variables)
    return env


def shell(clone: Path, command: str, env: Mapping[str, str], *, timeout: float = 90) -> str:
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=clone, env=dict(env),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def background(clone: Path, command: str, env: Mapping[str, str], port: int, name: str, *, wait: bool = True) -> Server:
    """`command` in its own process group, serving /health on `port` (waited for unless `wait` is
    false); the caller stops it."""
    stdout, stderr = clone.parent / f"{name}.out", clone.parent / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", command], cwd=clone, env=dict(env),
                                   stdout=out, stderr=err, start_new_session=True)
    server = Server(process=process, port=port, stdout=stdout, stderr=stderr)
    try:
        if wait:
            server.wait_until_serving(timeout=90)
    except BaseException:
        server.stop()
        raise
    return server


def answer_prompts(clone: Path, command: str, env: Mapping[str, str], answers: list[tuple[str, str]]) -> str:
    """Run `command` on a terminal of its own to its end, typing each answer once its prompt shows."""
    prompted = OnTerminal(clone, command, env, 0, "prompted", answers=answers)
    try:
        status = prompted.server.process.wait(timeout=60)
    finally:
        prompted.stop()
    output = prompted.server.stdout.read_text()
    assert status == 0 and not prompted.answers, output
    return output


class OnTerminal:
    """`command` on a terminal of its own, in its own process group, typing each answer once its
    prompt shows; what it prints goes to a file. A Server once it serves `port`; stop() ends it."""

    def __init__(self, clone: Path, command: str, env: Mapping[str, str], port: int, name: str,
                 answers: list[tuple[str, str]]) -> None:
        self.answers = list(answers)
        output, errors = clone.parent / f"{name}.out", clone.parent / f"{name}.err"
        errors.touch()
        self.controller, terminal = pty.openpty()
        process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", command], cwd=clone, env=dict(env),
                                   stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
                                   preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(terminal)
        self.server = Server(process=process, port=port, stdout=output, stderr=errors)
        self.reader = threading.Thread(target=self._read, args=(output,), daemon=True)
        self.reader.start()

    def _read(self, output: Path) -> None:
        seen = ""
        with output.open("w") as file:
            while True:
                try:
                    chunk = os.read(self.controller, 4096).decode(errors="replace")
                except OSError:  # the terminal closed: every process on it ended
                    return
                if not chunk:
                    return
                file.write(chunk)
                file.flush()
                seen += chunk
                if self.answers and self.answers[0][0] in seen:
                    prompt, answer = self.answers.pop(0)
                    seen = seen.split(prompt, 1)[1]
                    os.write(self.controller, f"{answer}\n".encode())

    def stop(self) -> None:
        self.server.stop()
        self.reader.join(timeout=10)
        os.close(self.controller)


def links(output: str) -> list[str]:
    return re.findall(r"\s(https?://\S+/v1/pay\?\S+)", output)


def test_every_readme_command_works_in_a_fresh_clone(clone: Path) -> None:
    blocks = readme_blocks(clone)
    quickstart = next(block for block in blocks if block[-1] == QUICKSTART_SERVER)
    ran: set[str] = set()
    # The production quickstart, as one script whose last line is the server, alongside; its fake
    # provider (README: `make fake-provider` in a second terminal) on a port of its own.
    production_port, provider_port = free_port(), free_port()
    script = "\n".join(quickstart).replace("127.0.0.1:8001", f"127.0.0.1:{provider_port}")
    password = secrets.token_urlsafe(16)
    # README: the fake provider first, in a second terminal (the reconciliation loop asks it at once).
    provider = background(clone, "make fake-provider",
                          environ(clone.parent, PORT=str(production_port), PROVIDER_PORT=str(provider_port)),
                          provider_port, "quickstart-provider")
    try:
        production = OnTerminal(clone, script, environ(clone.parent, GUNICORN_PORT=str(production_port)),
                                production_port, "quickstart",
                                answers=[("Username", "owner"), ("Email address", "owner@example.com"),
                                         ("Password:", password), ("Password (again)", password)])
        ran.update(quickstart)
        try:
            development_commands(clone, blocks, ran, port=free_port(), provider_port=free_port())
            production.server.wait_until_serving(timeout=90)
            quickstart_works(clone, production.server, password=password)
        finally:
            production.stop()
    finally:
        provider.stop()

    shown = {command for block in blocks for command in block}
    assert shown - ran == set(NOT_RUN), "a README command this test does not run"


def quickstart_works(clone: Path, server: Server, *, password: str) -> None:
    """The quickstart's server is ready, serves its QR links and the admin user it created, takes a
    payment through the fake provider with its settings, and its reconciliation loop runs."""
    url = server.url
    assert httpx.get(f"{url}/ready").json() == {"status": "ready"}
    printed = links(server.stdout.read_text())
    assert printed, server.logs()
    # As the quickstart's DJANGO_ALLOWED_HOSTS and DJANGO_PUBLIC_BASE_URL say: a browser on localhost.
    host = {"Host": "localhost"}
    query = urlsplit(printed[0]).query
    order_id = order_id_of(query)
    with httpx.Client(timeout=10) as browser:
        page = browser.get(f"{url}/v1/pay?{query}", headers=host)
        assert page.status_code == 200 and "Espresso" in page.text, page.text
        form = csrf(page)
        form["headers"] |= host  # type: ignore[operator]
        pay = browser.post(f"{url}/v1/orders/{order_id}/payment", **form)  # type: ignore[arg-type]
        assert pay.status_code == 303, pay.text
        paid = browser.post(pay.headers["location"], data={"action": "succeed"})
        assert paid.headers["location"] == f"http://localhost:8000/v1/orders/{order_id}"
    assert wait_for_status(server, order_id, "paid")["label"] == "Paid"
    with httpx.Client(timeout=10, base_url=url, headers=host) as browser:
        form = csrf(browser.get("/admin/login/"))
        form["data"] |= {"username": "owner", "password": password, "next": "/admin/"}  # type: ignore[operator]
        form["headers"] |= host  # type: ignore[operator]
        assert browser.post("/admin/login/", **form).headers.get("location") == "/admin/"  # type: ignore[arg-type]
    assert "nothing due" in (clone / "reconcile.log").read_text()
    assert "Traceback" not in server.logs()


def development_commands(clone: Path, blocks: list[list[str]], ran: set[str], *, port: int, provider_port: int) -> None:
    """The development commands, in the order a new user meets them; each one run is added to `ran`."""
    dev = environ(clone.parent, PORT=str(port), PROVIDER_PORT=str(provider_port))
    local = f"http://127.0.0.1:{port}"

    def run(command: str) -> str:
        ran.add(command)
        return shell(clone, command.replace("localhost:8000", f"localhost:{port}"), dev)

    server = background(clone, "make run", dev, port, "make-run")
    ran.add("make run")
    provider = None
    try:
        assert httpx.get(f"{local}/health").json() == {"status": "ok"}
        for command in [c for block in blocks for c in block if c.startswith("curl ")]:
            assert run(command).strip() == '{"status": "ok"}', command

        provider = background(clone, "make fake-provider", dev, provider_port, "fake-provider")
        ran.add("make fake-provider")
        seeded = links(run("make seed"))
        assert seeded and all(link.startswith(f"http://localhost:{port}/v1/pay?") for link in seeded), seeded

        # The payment flow of "Try a payment", as a browser does it.
        query = urlsplit(seeded[0]).query
        order_id = order_id_of(query)
        with httpx.Client(timeout=10) as browser:
            order_page = browser.get(f"{local}/v1/pay?{query}")
            assert order_page.status_code == 200, order_page.text
            pay = browser.post(f"{local}/v1/orders/{order_id}/payment", **csrf(order_page))  # type: ignore[arg-type]
            assert pay.status_code == 303, pay.text
            paid = browser.post(pay.headers["location"], data={"action": "succeed"})
            assert paid.headers["location"] == f"http://localhost:{port}/v1/orders/{order_id}"
        assert wait_for_status(server, order_id, "paid")["label"] == "Paid"

        tokens = run('make manage ARGS="seed_demo --machine-tokens"')
        token = re.search(r"^device demo-machine-lobby: machine API token (\S+)$", tokens, flags=re.MULTILINE)
        assert token, tokens
        machine = httpx.get(f"{local}/v1/machine/orders/{order_id}", headers={"Authorization": f"Bearer {token[1]}"})
        assert machine.json()["paid"] is True

        elsewhere = links(run("make seed BASE_URL=http://192.168.1.20:8000"))
        assert elsewhere and all(link.startswith("http://192.168.1.20:8000/v1/pay?") for link in elsewhere)
        phone_link = elsewhere[0]

        password = secrets.token_urlsafe(16)
        answer_prompts(clone, "make superuser", dev, [("Username", "barista"), ("Email address", "barista@example.com"),
                                                      ("Password:", password), ("Password (again)", password)])
        ran.add("make superuser")
        with httpx.Client(timeout=10, base_url=local) as browser:
            login = browser.get("/admin/login/")
            form = csrf(login)
            form["data"] |= {"username": "barista", "password": password, "next": "/admin/"}  # type: ignore[operator]
            assert browser.post("/admin/login/", **form).headers.get("location") == "/admin/"  # type: ignore[arg-type]

        provider.stop()
        failing = 'make fake-provider ARGS="--fail error"'
        provider = background(clone, failing, dev, provider_port, "failing-provider")
        ran.add(failing)
        with httpx.Client(timeout=30) as browser:
            query = urlsplit(seeded[1]).query
            order_page = browser.get(f"{local}/v1/pay?{query}")
            pay = browser.post(f"{local}/v1/orders/{order_id_of(query)}/payment", **csrf(order_page))  # type: ignore[arg-type]
            assert pay.status_code == 503, pay.text

        # A phone on the network opens a link printed for it: the README's `make run BASE_URL=...`,
        # asked through loopback with the Host header the phone sends.
        phone_run = re.search(r"`(make run BASE_URL=\S+)`", (clone / "README.md").read_text())
        assert phone_run, "README no longer shows how to serve a phone"
        server.stop()
        server = background(clone, phone_run[1], dev, port, "make-run-phone")
        ran.add(phone_run[1])
        phone = httpx.get(f"{local}/v1/pay?{urlsplit(phone_link).query}", headers={"Host": urlsplit(phone_link).netloc})
        assert phone.status_code == 200 and "Espresso" in phone.text, phone.text
    finally:
        if provider is not None:
            provider.stop()
        server.stop()
