"""Hostile requests at a real Gunicorn (production layer: JSON logs, HTTPS settings): never a 5xx,
and every line the server writes to stdout and stderr is JSON. The in-process share with many more
examples is tests/coffee_payment/test_fuzz.py."""

from __future__ import annotations

import secrets
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings

from devtools.processes import Server, base_environ, gunicorn
from tests.support.fuzz import GOOD_HOSTS, Fuzzed, is_json_line, requests, route_regexes, status_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EXAMPLES = 40


def exchange(port: int, request: Fuzzed) -> bytes:
    """Send while reading: a server may answer (a bad Host, say) and close before the body has
    arrived, and the reset that follows would discard an answer read only after sending."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sender = threading.Thread(target=_send, args=(sock, request.wire()), daemon=True)
        sender.start()
        data = bytearray()
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        sender.join(timeout=10)
    return bytes(data)


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:  # the server closed first: what it answered is what counts
        pass


@pytest.fixture
def production_server(tmp_path: Path, migrated_server_database: str):
    env = base_environ(
        tmp_path, DJANGO_ENV="production", DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS=",".join(GOOD_HOSTS), DATABASE_URL=migrated_server_database,
        GUNICORN_WORKERS="1", DJANGO_LOG_LEVEL="INFO", PAYMENT_PROVIDER_URL="http://127.0.0.1:9/v3",
        # The SQLite pass: one server, one file (the PostgreSQL pass ignores it).
        DATABASE_ALLOW_SQLITE="true",
    )
    with gunicorn(tmp_path, env=env) as server:
        yield server


def test_hostile_requests_to_gunicorn_never_get_a_5xx_and_every_line_is_json(production_server: Server) -> None:
    statuses: list[int | None] = []

    @hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request=requests(route_regexes()))
    def one(request: Fuzzed) -> None:
        response = exchange(production_server.port, request)
        status = status_of(response)
        statuses.append(status)
        # The server may refuse what it cannot parse by closing the connection: no status, no 5xx.
        assert status is None or status < 500, (request, response[:500])

    one()
    assert any(status is not None and status < 400 for status in statuses), statuses
    lines = [line for path in (production_server.stdout, production_server.stderr)
             for line in path.read_text(errors="replace").splitlines()]
    assert lines and all(is_json_line(line) for line in lines), [line for line in lines if not is_json_line(line)][:5]
