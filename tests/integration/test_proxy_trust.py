"""Who the client is, against a real `gunicorn -c config/gunicorn.py`: proxy headers count only from a
peer in GUNICORN_FORWARDED_ALLOW_IPS, for the admin login throttle, the access log and HTTPS alike;
/metrics is never answered on the application's port, whatever a request says."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from devtools.processes import BIN, Server, base_environ, gunicorn, run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PASSWORD = "right-password-123"
# django-axes' limit (DJANGO_ADMIN_LOGIN_FAILURE_LIMIT's default): this failure is answered 429.
LIMIT = 5
# What ingresses and CDNs send; a client can send every one of them itself.
PROXY_HEADERS = ("x-forwarded-for", "x-real-ip", "x-forwarded-proto", "forwarded", "via", "cf-connecting-ip")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")


def forged(number: int) -> dict[str, str]:
    """Every proxy header, with values that change from one request to the next."""
    return {
        "x-forwarded-for": f"203.0.113.{number % 250}, 198.51.100.{number % 250}",
        "x-real-ip": f"192.0.2.{number % 250}",
        "x-forwarded-proto": "https",
        "forwarded": f"for=192.0.2.{number % 250};proto=https",
        "via": f"1.1 proxy-{number}",
        "cf-connecting-ip": f"192.0.2.{(number + 7) % 250}",
    }


@contextmanager
def browsing(server: Server) -> Iterator[Browser]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield Browser(client)


@contextmanager
def admin_server(tmp_path: Path, database_url: str, **overrides: str) -> Iterator[Server]:
    """Two workers (their failure counts meet in the database) and a superuser to guess at."""
    env = base_environ(tmp_path, DATABASE_URL=database_url, GUNICORN_WORKERS="2", DJANGO_LOG_LEVEL="INFO",
                       DJANGO_SECURE_HSTS_SECONDS="60", DJANGO_SUPERUSER_PASSWORD=PASSWORD, **overrides)
    created = run([str(BIN / "python"), "manage.py", "createsuperuser", "--noinput", "--username", "staff",
                   "--email", "staff@example.com"], env=env)
    assert created.returncode == 0, created.stderr
    with gunicorn(tmp_path, env=env) as server:
        yield server


class Browser:
    """An admin login form's session: the CSRF cookie is `Secure` outside development, so it goes
    into the Cookie header by hand (httpx sends no secure cookie over http://)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        page = self.client.get("/admin/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert page.status_code == 200 and token, page.text[:500]
        self.token, self.cookie = token.group(1), page.cookies["csrftoken"]

    def log_in(self, password: str, headers: dict[str, str]) -> int:
        response = self.client.post(
            "/admin/login/?next=/admin/",
            data={"csrfmiddlewaretoken": self.token, "username": "staff", "password": password},
            headers={"cookie": f"csrftoken={self.cookie}", **headers},
        )
        return response.status_code


def access_clients(server: Server) -> set[str]:
    """The client addresses of the access log's login lines (`<address>:<port> - "POST ...`)."""
    return set(re.findall(r'(\S+?):\d+ - "POST /admin/login/', server.stdout.read_text()))


def is_https(server: Server, headers: dict[str, str]) -> bool:
    """Whether the server took the request for HTTPS: HSTS is only sent on HTTPS answers."""
    response = httpx.get(server.url + "/v1/order-status/x", headers=headers, timeout=10)
    assert response.status_code == 404
    return "strict-transport-security" in response.headers


def test_rotating_proxy_headers_from_an_untrusted_peer_are_locked_out_all_the_same(
    tmp_path: Path, migrated_server_database: str
) -> None:
    with admin_server(tmp_path, migrated_server_database) as server, browsing(server) as browser:
        statuses = [browser.log_in("wrong", forged(number)) for number in range(30)]
        # Every attempt counted for the peer itself: the limit's failure and all after it are 429.
        assert statuses == [200] * (LIMIT - 1) + [429] * (30 - LIMIT + 1), statuses
        assert browser.log_in(PASSWORD, forged(30)) == 429
        assert access_clients(server) == {"127.0.0.1"}
        # Nor does a forged X-Forwarded-Proto make a plain request HTTPS.
        assert not is_https(server, forged(31))


def test_from_a_trusted_proxy_the_address_it_forwards_is_the_client(tmp_path: Path, migrated_server_database: str) -> None:
    with (admin_server(tmp_path, migrated_server_database, GUNICORN_FORWARDED_ALLOW_IPS="127.0.0.1") as server,
          browsing(server) as browser):
        # Each forwarded address fails once: none reaches the limit.
        spread = [browser.log_in("wrong", {"x-forwarded-for": f"203.0.113.{number}"}) for number in range(LIMIT + 1)]
        assert spread == [200] * (LIMIT + 1)
        # One address failing LIMIT times is locked out, whatever else it sends (X-Real-IP and the
        # other headers are never read); the client named before it by the client itself is not.
        # (No X-Forwarded-Proto: from this proxy it would make the POST HTTPS, which CSRF wants a
        # Referer for.)
        rotating = ({**forged(number), "x-forwarded-for": "192.0.2.1, 198.51.100.77", "x-forwarded-proto": "http"}
                    for number in itertools.count())
        same = [browser.log_in("wrong", next(rotating)) for _ in range(LIMIT)]
        assert same == [200] * (LIMIT - 1) + [429]
        assert browser.log_in(PASSWORD, next(rotating)) == 429
        assert browser.log_in(PASSWORD, {"x-forwarded-for": "192.0.2.1"}) == 302
        assert access_clients(server) == {f"203.0.113.{n}" for n in range(LIMIT + 1)} | {"198.51.100.77", "192.0.2.1"}
        # The trusted proxy's X-Forwarded-Proto is the scheme; a plain request stays plain.
        assert is_https(server, {"x-forwarded-proto": "https"})
        assert not is_https(server, {"forwarded": "proto=https", "x-forwarded-ssl": "on"})


def test_metrics_are_never_answered_on_the_application_port(tmp_path: Path, migrated_server_database: str) -> None:
    # A trusted proxy's headers: the hardest case, since they change who the client is.
    with admin_server(tmp_path, migrated_server_database, GUNICORN_FORWARDED_ALLOW_IPS="127.0.0.1") as server:
        with httpx.Client(timeout=10) as client:
            for number, (method, header) in enumerate(itertools.product(METHODS, (None, *PROXY_HEADERS))):
                headers = {header: forged(number)[header]} if header else {}
                for host in (None, "localhost", "10.244.1.17"):
                    sent = headers | ({"host": host} if host else {})
                    answer = client.request(method, server.url + "/metrics", headers=sent)
                    assert answer.status_code in (400, 404, 405), (method, sent, answer.status_code)
                    assert b"coffee_" not in answer.content
            # The scraper's own port answers.
            scraped = client.get(server.metrics_url, headers=forged(0))
            assert scraped.status_code == 200 and b"coffee_http_request_duration_seconds" in scraped.content
