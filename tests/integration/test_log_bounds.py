"""Bounded logs against a real Gunicorn (production's JSON lines): hostile requests to every route,
each with huge and control-character-laden paths, query values, headers and JSON fields, write at
most BOUND bytes of log each, and every line stays one JSON object."""

from __future__ import annotations

import json
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from coffee_payment.log_bounds import LOG_VALUE_LIMIT
from devtools.processes import BIN, Server, base_environ, gunicorn, run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# A request's lines (its access line and a warning or two), each holding a few values of at most
# LOG_VALUE_LIMIT characters and a note; before the bound, one notification's `event` alone made a
# 1,000,229-byte line.
BOUND = 16 * LOG_VALUE_LIMIT
# Under GUNICORN_MAX_HEADER_BYTES (32 KiB) with the rest of the request: a header section the
# server parses and passes on, not one it refuses.
HUGE = 6000
CONTROLS = "\r\n\x1b[31mINFO forged line\x7f\u2028\x85"


def hostile_text(length: int = HUGE) -> str:
    return (CONTROLS + "x" * 50) * (length // 70)


def hostile_path_part() -> str:
    return quote(hostile_text(), safe="")


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        answer = bytearray()
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return bytes(answer)


def wire(method: str, target: str, *, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Connection: close", f"Content-Length: {len(body)}",
             *(f"{name}: {value}" for name, value in headers.items())]
    return "\r\n".join(lines).encode("latin-1", errors="replace") + b"\r\n\r\n" + body


def json_body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def hostile_requests(token: str, order_id: str) -> Iterator[tuple[str, bytes]]:
    """(name, raw request): each route, with what a client controls made huge and hostile."""
    junk = hostile_text()
    printable = "A" * (HUGE // 2) + "%0d%0a"  # header values (what httptools accepts), 18 KB in all
    base = {"Host": "localhost", "X-Forwarded-Proto": "https"}
    loud = {**base, "User-Agent": printable, "X-Request-ID": printable, "Referer": printable,
            "Accept-Language": printable, "Cookie": f"sessionid={printable}; csrftoken={printable}"}
    machine = {**base, "Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    part = hostile_path_part()
    routes = ["/health", "/ready", "/metrics", f"/v1/order-status/{part}", f"/v1/orders/{part}",
              f"/v1/machine/orders/{part}", "/v1/machine/menu", f"/admin/{part}", f"/static/{part}", f"/{part}"]
    for route in routes:
        yield f"GET {route[:30]} (path)", wire("GET", route, headers=base)
        yield f"GET {route[:30]} (headers)", wire("GET", route.split("/", 2)[0] + "/" + route.split("/")[1], headers=loud)
        yield f"GET {route[:30]} (machine)", wire("GET", route, headers=machine)
    yield "NUL", wire("GET", f"/v1/order-status/{part}%00?q=%00{part}", headers=base)
    yield "bad Host", wire("GET", "/v1/order-status/x", headers={"Host": "evil" + "e" * HUGE + ".example"})
    yield "scan query", wire("GET", f"/v1/pay?deviceUuid={part}&orderId={part}&drinkNo={part}&size=1", headers=base)
    yield "pay", wire("POST", f"/v1/orders/{part}/payment", headers=base)
    yield "webhook event", wire("POST", "/v1/payments/webhook", headers={**base, "Content-Type": "application/json"},
                                body=json_body(type="notification", event=junk * 60, object={"id": "no-such-payment"}))
    yield "webhook hint", wire("POST", "/v1/payments/webhook", headers={**base, "Content-Type": "application/json"},
                               body=json_body(type="notification", event=junk, object={"id": "made-up",
                                                                                      "metadata": {"order_id": order_id}}))
    yield "webhook id", wire("POST", "/v1/payments/webhook", headers={**base, "Content-Type": "application/json"},
                             body=json_body(type="notification", event="payment.succeeded", object={"id": junk}))
    yield "report", wire("POST", f"/v1/machine/orders/{order_id}/report", headers=machine,
                         body=json_body(outcome=junk * 60))
    yield "report path", wire("POST", f"/v1/machine/orders/{part}/report", headers=machine, body=json_body(outcome=junk))
    yield "menu", wire("PUT", "/v1/machine/menu", headers=machine, body=json_body(items=[{
        "drink_number": 1, "size": 1, "drink_name": junk * 60, "price_kopecks": 1, "available": True}]))
    yield "admin login", wire("POST", "/admin/login/", headers={**base, "Content-Type": "application/x-www-form-urlencoded"},
                              body=f"username={quote(junk * 50)}&password=x".encode())


@pytest.fixture
def seeded_server(tmp_path: Path, migrated_server_database: str) -> Iterator[tuple[Server, str, str]]:
    env = base_environ(tmp_path, DJANGO_ENV="production", DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
                       DJANGO_ALLOWED_HOSTS="localhost", DATABASE_URL=migrated_server_database,
                       DATABASE_ALLOW_SQLITE="true", GUNICORN_WORKERS="1", DJANGO_LOG_LEVEL="INFO",
                       # The test client plays the ingress: its X-Forwarded-Proto gets past the redirect.
                       GUNICORN_FORWARDED_ALLOW_IPS="127.0.0.1",
                       PAYMENT_PROVIDER_URL="http://127.0.0.1:9/v3", PAYMENT_PROVIDER_SECRETS="demo-shop:demo-secret")
    seeded = run([str(BIN / "python"), "manage.py", "seed_demo", "--machine-tokens"], env=env)
    assert seeded.returncode == 0, seeded.stderr
    token = re.search(r"^device demo-machine-lobby: machine API token (\S+)$", seeded.stdout, flags=re.MULTILINE)
    link = next(line.split()[-1] for line in seeded.stdout.splitlines() if "/v1/pay?" in line)
    assert token, seeded.stdout
    with gunicorn(tmp_path, env=env) as server:
        # The QR link's order, scanned once: an order without a payment yet.
        order_id = dict(pair.split("=") for pair in urlsplit(link).query.split("&"))["orderId"]
        scan = exchange(server.port, wire("GET", f"{urlsplit(link).path}?{urlsplit(link).query}",
                                          headers={"Host": "localhost", "X-Forwarded-Proto": "https"}))
        assert scan.startswith(b"HTTP/1.1 "), scan[:200]
        yield server, token.group(1), order_id


def logged(server: Server) -> int:
    return server.stdout.stat().st_size + server.stderr.stat().st_size


def settled_size(server: Server) -> int:
    """The logs' size once nothing more arrives for a moment (lines of a request already answered)."""
    size, deadline = logged(server), time.monotonic() + 2
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if (now := logged(server)) == size:
            return size
        size = now
    return size


def test_hostile_requests_to_every_route_write_a_bounded_log(seeded_server: tuple[Server, str, str]) -> None:
    server, token, order_id = seeded_server
    growth: dict[str, int] = {}
    for name, request in hostile_requests(token, order_id):
        before = settled_size(server)
        answer = exchange(server.port, request)
        # Every request reaches the application (none refused for its size), and none fails (the
        # provider is unreachable on purpose: a notification it would be asked about gets 503).
        assert answer.startswith(b"HTTP/1.1 ") and answer[9:12] not in (b"413", b"431", b"500"), (name, answer[:300])
        growth[name] = settled_size(server) - before
    assert max(growth.values()) <= BOUND, sorted(growth.items(), key=lambda item: -item[1])[:5]
    # The log grew at all (access lines are on), and every line is one JSON object of the server's.
    assert min(growth.values()) > 0
    lines = [line for path in (server.stdout, server.stderr) for line in path.read_text(errors="strict").splitlines()]
    assert all(isinstance(json.loads(line), dict) for line in lines)
