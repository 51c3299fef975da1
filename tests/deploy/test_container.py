"""The image, built and run for real with Podman: read-only root filesystem, non-root, signals.

Skipped with a reason where podman is not installed; .ci/run installs it and sets
REQUIRE_CONTAINER_TESTS=1, which turns that skip into a failure.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest

from coffee_payment.conf import VARIABLES
from devtools.processes import REPO, free_port

pytestmark = [pytest.mark.container, pytest.mark.integration, pytest.mark.timeout(600)]

IMAGE = "localhost/coffee-payment-server:latest"
PODMAN_ENV = {
    **os.environ,
    "CONTAINERS_CONF": str(REPO / ".podman" / "containers.conf"),
    "CONTAINERS_STORAGE_CONF": str(REPO / ".podman" / "storage.conf"),
}
APP_UID = 10001
# A read-only root filesystem. Podman would add tmpfs mounts on /run, /tmp and /var/tmp; Docker and
# Kubernetes do not, so neither do the tests.
READ_ONLY = ("--read-only", "--read-only-tmpfs=false")

# A value for every variable the server reads, each different from its default where it can be.
PRODUCTION_ENV = {
    "DJANGO_ENV": "production",
    "DJANGO_SECRET_KEY": "container-test-only-" + "0123456789abcdefghijklmnopqrstuvwxyz",
    "DJANGO_DEBUG": "false",
    "DJANGO_ALLOWED_HOSTS": "localhost",
    "DJANGO_LOG_LEVEL": "INFO",
    "DJANGO_LOG_FORMAT": "json",
    "DATABASE_URL": "sqlite:////tmp/db.sqlite3",
    # One container, one SQLite file: the single-replica case the production layer allows when told.
    "DATABASE_ALLOW_SQLITE": "true",
    "DATABASE_POOL_MAX_SIZE": "5",
    "DATABASE_WAIT_TIMEOUT": "2.5",
    "DJANGO_PUBLIC_BASE_URL": "http://localhost:8080",
    "ORDER_EXPIRY_MINUTES": "20",
    "ORDER_RECONCILE_AFTER_MINUTES": "15",
    "ORDER_HOLD_MAX_MINUTES": "90",
    "ORDER_RETENTION_DAYS": "60",
    "ORDER_CONTACT_RETENTION_DAYS": "14",
    "ORDER_PROVIDER_RECHECK_SECONDS": "3",
    "ORDER_STATUS_PROVIDER_BUDGET_SECONDS": "1.5",
    "ORDER_RECONCILE_LIST_HOURS": "12",
    "ORDER_MAKE_WINDOW_SECONDS": "180",
    "ORDER_MAKE_TIMEOUT_SECONDS": "900",
    "DEVICE_OFFLINE_AFTER_SECONDS": "300",
    "PAYMENT_PROVIDER_URL": "http://127.0.0.1:9/v3",
    "PAYMENT_PROVIDER_SECRETS": "shop-1:container-test-only",
    "PAYMENT_PROVIDER_CONNECT_TIMEOUT": "2",
    "PAYMENT_PROVIDER_READ_TIMEOUT": "5",
    "PAYMENT_PROVIDER_RETRIES": "1",
    "PAYMENT_PROVIDER_NOTIFICATION_ADDRESSES": "185.71.76.0/27,2a02:5180::/32",
    "PAYMENT_PROVIDER_REREAD_SECONDS": "7",
    "PAYMENT_PROVIDER_UNKNOWN_READS_PER_MINUTE": "30",
    "GUNICORN_HOST": "0.0.0.0",
    "GUNICORN_PORT": "8080",
    "GUNICORN_WORKERS": "3",
    "GUNICORN_TIMEOUT": "45",
    "GUNICORN_GRACEFUL_TIMEOUT": "20",
    "GUNICORN_KEEPALIVE": "7",
    "GUNICORN_MAX_REQUESTS": "1000",
    "GUNICORN_MAX_REQUESTS_JITTER": "50",
    "GUNICORN_MAX_HEADER_BYTES": "16384",
    "GUNICORN_HEADER_TIMEOUT": "15",
    "GUNICORN_MAX_BODY_BYTES": "2097152",
    # In memory and writable even when nothing else is (test_serves_with_nothing_writable_but_dev_shm).
    "GUNICORN_METRICS_DIR": "/dev/shm/coffee-metrics",
    "GUNICORN_METRICS_PORT": "9464",
    "GUNICORN_WORKER_CONNECTIONS": "500",
    "GUNICORN_FORWARDED_ALLOW_IPS": "192.0.2.0/24",  # TEST-NET-1: no peer of this test is trusted
    "DJANGO_SECURE_SSL_REDIRECT": "false",
    "DJANGO_SECURE_HSTS_SECONDS": "3600",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "false",
    "DJANGO_SECURE_HSTS_PRELOAD": "true",
    "DJANGO_ADMIN_LOGIN_FAILURE_LIMIT": "7",
    "DJANGO_ADMIN_LOCKOUT_MINUTES": "30",
    "RUN_MIGRATIONS": "1",
}

# Every process in the container: pid, parent pid, real uid and command line, from /proc.
PROCESS_LIST = """
import json, os
rows = []
for pid in sorted(int(name) for name in os.listdir("/proc") if name.isdigit()):
    try:
        ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        uid = int(next(line.split()[1] for line in open(f"/proc/{pid}/status") if line.startswith("Uid:")))
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode().strip()
    except (FileNotFoundError, ProcessLookupError):
        continue
    rows.append({"pid": pid, "ppid": ppid, "uid": uid, "cmdline": cmdline})
print(json.dumps(rows))
"""


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], env=PODMAN_ENV, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def image() -> str:
    """Build the image as `make image` does (the local base image first, when it is missing)."""
    if shutil.which("podman") is None:
        if os.environ.get("REQUIRE_CONTAINER_TESTS") == "1":
            pytest.fail("REQUIRE_CONTAINER_TESTS=1 but podman is not installed")
        pytest.skip("podman is not installed (bash deploy/container/podman-setup.sh installs it)")
    build = subprocess.run(
        ["bash", "deploy/container/build.sh"],
        cwd=REPO,
        env={**os.environ, "IMAGE": IMAGE},
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert build.returncode == 0, f"image build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    return IMAGE


@dataclass
class Container:
    name: str
    url: str

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def state(self, field: str) -> str:
        return podman("inspect", "--format", f"{{{{.State.{field}}}}}", self.name).stdout.strip()

    def processes(self) -> list[dict[str, int | str]]:
        return json.loads(podman("exec", self.name, "python3", "-c", PROCESS_LIST).stdout)

    def wait_until_ready(self, *, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state("Running") != "true":
                raise AssertionError(f"container exited with {self.state('ExitCode')}:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"/ready did not answer 200 within {timeout} s:\n{self.logs()}")


def env_args(env: dict[str, str]) -> list[str]:
    return [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]


def container_name() -> str:
    return f"coffee-payments-test-{uuid.uuid4().hex[:12]}"


@contextmanager
def container(image: str, *, env: dict[str, str], port: int, tmp: bool = True) -> Iterator[Container]:
    """The image as a server on a loopback port, as its own (non-root) user, with a read-only root
    filesystem and, unless `tmp` is false, a tmpfs on /tmp."""
    name = container_name()
    host_port = free_port()
    mounts = ["--tmpfs", "/tmp"] if tmp else []
    try:
        podman(
            "run", "--detach", "--name", name, *READ_ONLY, *mounts,
            "--publish", f"127.0.0.1:{host_port}:{port}", *env_args(env), image,
        )  # fmt: skip
        running = Container(name=name, url=f"http://127.0.0.1:{host_port}")
        running.wait_until_ready()
        yield running
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def run_once(image: str, *, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The image in the foreground: what it prints and its exit status."""
    name = container_name()
    try:
        return podman("run", "--name", name, *READ_ONLY, "--no-healthcheck", *env_args(env), image, check=False)
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


@pytest.fixture(scope="module")
def production(image: str) -> Iterator[Container]:
    with container(image, env=PRODUCTION_ENV, port=8080) as running:
        yield running


IMAGE_PACKAGES = """
import importlib.metadata as m, json
names = ["gunicorn", "uvicorn", "uvicorn-worker", "uvloop", "httptools", "websockets", "django"]
print(json.dumps({name: m.version(name) for name in names}))
"""


def test_r4_image_installs_the_server_stack_and_exposes_the_port(image: str, production: Container) -> None:
    """R4.1, R4.2, R4.5: Gunicorn, uvicorn with its standard extras and uvicorn-worker; EXPOSE 8000 (and the metrics port)."""
    versions = json.loads(podman("exec", production.name, "python3", "-c", IMAGE_PACKAGES).stdout)
    # uvloop, httptools and websockets are what uvicorn[standard] adds to plain uvicorn.
    assert {"gunicorn", "uvicorn", "uvicorn-worker", "uvloop", "httptools", "websockets"} <= set(versions)
    exposed = podman("image", "inspect", "--format", "{{json .Config.ExposedPorts}}", image).stdout
    assert set(json.loads(exposed)) == {"8000/tcp", "9464/tcp"}


# What of the development tools (devtools/: the fake provider, seed_demo, the test processes) the
# image has: importable modules from /app, and files anywhere in /app or the venv.
DEVELOPMENT_TOOLS = """
import importlib.util, json, pathlib
found = []
for name in ("devtools", "devtools.fake_provider", "payments.fake_provider", "tests"):
    try:
        if importlib.util.find_spec(name) is not None:
            found.append(name)
    except ModuleNotFoundError:
        pass
for root in ("/app", "/opt/venv"):
    found += [str(path) for path in pathlib.Path(root).rglob("*")
              if "fake_provider" in path.name or path.name in ("devtools", "seed_demo.py", "demo_data.py")]
print(json.dumps(found))
"""


def test_image_ships_no_development_tools(production: Container) -> None:
    """The fake provider, seed_demo and the rest of devtools/ stay in the checkout."""
    found = json.loads(podman("exec", production.name, "python3", "-c", DEVELOPMENT_TOOLS).stdout)
    assert found == []
    unknown = podman("exec", production.name, "python", "manage.py", "seed_demo", check=False)
    assert unknown.returncode != 0 and "Unknown command: 'seed_demo'" in unknown.stderr


def test_every_variable_is_taken_from_podman_run_env(production: Container) -> None:
    """R4.4: every GUNICORN_*, DJANGO_* and DATABASE_URL variable works from `run -e`."""
    assert set(VARIABLES) <= set(PRODUCTION_ENV), "give every variable a value in PRODUCTION_ENV"
    report = podman("exec", production.name, "python", "manage.py", "show_config").stdout
    sources = {line.split()[0]: line.split(None, 2)[2] for line in report.splitlines()[1:]}
    assert sources["layer"] == "env DJANGO_ENV"
    for variable, key in VARIABLES.items():
        # A source may carry a note after "; " (the drain's graceful_timeout says what it sets).
        assert sources[key].split("; ")[0] == f"env {variable}", report


def test_probes_answer_on_a_read_only_root_filesystem(production: Container) -> None:
    health = httpx.get(production.url + "/health", timeout=5)
    ready = httpx.get(production.url + "/ready", timeout=5)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", production.name).stdout.strip() == "true"
    write = podman("exec", production.name, "touch", "/app/written", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_serves_with_nothing_writable_but_dev_shm(image: str) -> None:
    # Gunicorn's worker heartbeat files go to /dev/shm, which every runtime mounts writable.
    env = {**PRODUCTION_ENV, "DATABASE_URL": "sqlite:////dev/shm/db.sqlite3", "GUNICORN_WORKERS": "1"}
    with container(image, env=env, port=8080, tmp=False) as running:
        assert httpx.get(running.url + "/ready", timeout=5).status_code == 200
        write = podman("exec", running.name, "touch", "/tmp/written", check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_image_healthcheck_passes(production: Container) -> None:
    # The HEALTHCHECK runs python, not curl; it reads GUNICORN_PORT (8080 here).
    assert podman("healthcheck", "run", production.name).returncode == 0


def test_gunicorn_is_pid_1_with_gunicorn_workers_uvicorn_workers_as_non_root(production: Container) -> None:
    """R4.3, R1.1, R1.2: the container runs Gunicorn as PID 1 with UvicornWorker-class workers."""
    processes = production.processes()
    by_pid = {p["pid"]: p for p in processes}
    assert by_pid[1]["cmdline"].endswith("gunicorn -c config/gunicorn.py")
    workers = [p for p in processes if p["ppid"] == 1 and "gunicorn" in str(p["cmdline"])]
    assert len(workers) == int(PRODUCTION_ENV["GUNICORN_WORKERS"])
    assert {p["uid"] for p in processes if p["pid"] in {1, *(w["pid"] for w in workers)}} == {APP_UID}

    logs = production.logs()
    # config/gunicorn.py's worker class, a uvicorn_worker.UvicornWorker subclass (tests/coffee_payment).
    assert "Using worker: coffee_payment.workers.DrainingUvicornWorker" in logs
    # Each worker's uvicorn server logs its own pid once it serves.
    started = {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", logs)}
    assert started == {w["pid"] for w in workers}


def test_admin_works_with_collected_static_files(production: Container) -> None:
    login = httpx.get(production.url + "/admin/login/", headers={"host": "localhost"}, timeout=5)
    assert login.status_code == 200
    stylesheet = re.search(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', login.text)
    assert stylesheet, "the admin should link the content-hashed file collectstatic wrote"
    css = httpx.get(production.url + stylesheet.group(1), headers={"accept-encoding": "gzip"}, timeout=5)
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert css.headers["content-encoding"] == "gzip"
    assert "immutable" in css.headers["cache-control"]
    assert httpx.get(production.url + "/admin/login/", headers={"host": "elsewhere"}, timeout=5).status_code == 400


def cluster_recipe() -> list[list[str]]:
    """docs/operations.md's in-cluster commands, as what runs in the container after `--`."""
    section = (REPO / "docs" / "operations.md").read_text().split("### Admin user and machine tokens\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert block, "docs/operations.md has no in-cluster recipe"
    return [line.split(" -- ", 1)[1].split() for line in block[1].splitlines() if line.startswith("kubectl ")]


MACHINE = """
import datetime
from payments.models import Device, Merchant
merchant = Merchant.objects.create(name="Recipe", contact_email="r@example.com", shop_id="shop-1",
                                   active_until=datetime.date.today() + datetime.timedelta(days=1))
Device.objects.create(device_uuid="{device}", merchant=merchant, location="Recipe test")
"""


def test_the_documented_admin_user_and_machine_token_recipe_works_in_the_image(production: Container) -> None:
    """What docs/operations.md runs with `kubectl exec`: the image has every command it uses."""
    (superuser, issue) = cluster_recipe()
    assert superuser == ["python", "manage.py", "createsuperuser"]
    # Without a terminal here: the same command, told its answers.
    created = podman("exec", "--env", "DJANGO_SUPERUSER_PASSWORD=recipe-password-7", production.name, *superuser,
                     "--noinput", "--username", "owner", "--email", "owner@example.com", check=False)
    assert created.returncode == 0, created.stderr
    assert issue[:3] == ["python", "manage.py", "issue_machine_token"]
    podman("exec", production.name, "python", "manage.py", "shell", "-c", MACHINE.format(device=issue[3]))
    issued = podman("exec", production.name, *issue, check=False)
    token = re.search(rf"^device {issue[3]}: machine API token (\S+)$", issued.stdout, flags=re.MULTILINE)
    assert issued.returncode == 0 and token, issued.stdout + issued.stderr
    menu = httpx.get(production.url + "/v1/machine/menu", timeout=5,
                     headers={"host": "localhost", "authorization": f"Bearer {token[1]}"})
    assert (menu.status_code, menu.json()) == (200, {"items": []})


def timed_stop(name: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = podman("stop", "--time", "30", name, timeout=45, check=False)
    return result, time.monotonic() - started


def test_podman_stop_lets_a_request_in_flight_finish_and_exits_0(image: str) -> None:
    """R3.1, R3.4, R3.5 in the container: STOPSIGNAL SIGTERM reaches Gunicorn as PID 1."""
    env = {**PRODUCTION_ENV, "GUNICORN_WORKERS": "2"}
    with container(image, env=env, port=8080) as running, ThreadPoolExecutor(max_workers=1) as pool:
        stops: list[Future[tuple[subprocess.CompletedProcess[str], float]]] = []

        def slow_body() -> Iterator[bytes]:
            # The headers are out, so the request is in flight: stop the container now and send
            # the body over the next three seconds.
            stops.append(pool.submit(timed_stop, running.name))
            time.sleep(0.5)
            for _ in range(25):
                yield b"x"
                time.sleep(0.1)

        host, port = running.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=40)
        connection.request("POST", "/health", body=slow_body(), headers={"Content-Length": "25"})
        response = connection.getresponse()
        body = response.read()  # raises IncompleteRead if the response was cut short
        connection.close()
        stopped, seconds = stops[0].result(timeout=60)

        assert (response.status, json.loads(body)) == (200, {"status": "ok"})
        assert stopped.returncode == 0, stopped.stderr
        assert 1.5 < seconds < 30, "podman stop should wait for the request, neither cut nor kill it"
        assert running.state("ExitCode") == "0"
        assert '"POST /health HTTP/1.1\\" 200' in running.logs()


def test_development_mode_runs_the_django_development_server(image: str) -> None:
    """R4.6: RUN_MODE=development runs Django's development server (production is the default)."""
    env = {
        "RUN_MODE": "development",
        "GUNICORN_PORT": "8001",
        "DATABASE_URL": "sqlite:////tmp/db.sqlite3",
        "RUN_MIGRATIONS": "1",
    }
    with container(image, env=env, port=8001) as running:
        assert httpx.get(running.url + "/health", timeout=5).json() == {"status": "ok"}
        pid_1 = next(p for p in running.processes() if p["pid"] == 1)
        assert str(pid_1["cmdline"]).endswith("manage.py runserver 0.0.0.0:8001")
        # The entrypoint picked the settings layer for the server (`podman exec` bypasses it).
        environ = podman("exec", running.name, "python3", "-c", "print(open('/proc/1/environ').read())").stdout
        assert "DJANGO_ENV=development" in environ.split("\0")
        assert podman("stop", "--time", "30", running.name).returncode == 0
        assert running.state("ExitCode") == "0"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RUN_MODE": "staging"}, "RUN_MODE='staging' is not a run mode (allowed: production, development)"),
        (
            {"DJANGO_ALLOWED_HOSTS": "localhost", "DATABASE_URL": "sqlite:////tmp/db.sqlite3"},
            # Every failure at once, not one per try.
            "DJANGO_SECRET_KEY is required in the production layer and is not set; "
            "DJANGO_PUBLIC_BASE_URL is required in the production layer and is not set; "
            "DATABASE_URL='sqlite:////tmp/db.sqlite3' is SQLite, refused in the production layer "
            "(use PostgreSQL, or set DATABASE_ALLOW_SQLITE=true for a single replica)",
        ),
    ],
)
def test_refuses_to_start_with_one_line(image: str, env: dict[str, str], message: str) -> None:
    result = run_once(image, env=env)
    assert result.returncode == 1
    assert result.stdout + result.stderr == f"configuration error: {message}\n"
