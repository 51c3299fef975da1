"""End to end on real processes: Gunicorn + UvicornWorkers and the fake provider on loopback ports.

scan the QR link -> order page -> Pay -> provider's confirmation page -> Pay there -> the provider
notifies the webhook -> the status page's poll says paid.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from devtools import postgres
from devtools.processes import BIN, Server, base_environ, fake_provider, gunicorn, run
from tests.support.fake_provider import fake_provider_thread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRETS = "demo-shop:demo-secret"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str], str]]:
    """A migrated, seeded database for the servers of this module; the QR links' query strings and
    the lobby machine's API token."""
    tmp_path = tmp_path_factory.mktemp("flow-db")
    with postgres.server_database(tmp_path) as url:
        env = base_environ(tmp_path, DATABASE_URL=url)
        for command in (["migrate", "--noinput"], ["seed_demo", "--machine-tokens"]):
            result = run([str(BIN / "python"), "manage.py", *command], env=env)
            assert result.returncode == 0, result.stderr
        queries = [urlsplit(line.split()[-1]).query for line in result.stdout.splitlines() if "/v1/pay?" in line]
        token = re.search(r"^device demo-machine-lobby: machine API token (\S+)$", result.stdout, flags=re.MULTILINE)
        assert token, result.stdout
        yield url, queries, token.group(1)


def server_environ(tmp_path: Path, database_url: str, provider: str, **overrides: str) -> dict[str, str]:
    return base_environ(
        tmp_path, DATABASE_URL=database_url, PAYMENT_PROVIDER_URL=f"{provider}/v3",
        PAYMENT_PROVIDER_SECRETS=SECRETS, DJANGO_LOG_LEVEL="INFO", **overrides,
    )


def machine_shows(server: Server, token: str, order_id: str) -> None:
    """The machine shows the order's QR code and polls for it (404 until it is scanned): it is seen,
    so a scan of the code finds it online."""
    polled = httpx.get(f"{server.url}/v1/machine/orders/{order_id}", headers={"Authorization": f"Bearer {token}"})
    assert polled.status_code in (200, 404), polled.text


def csrf(page: httpx.Response) -> dict[str, object]:
    """Keyword arguments that post the page's form as a browser on http://localhost would.

    The CSRF cookie is `Secure` outside development; browsers still send it to localhost, httpx
    does not, so it goes into the Cookie header by hand.
    """
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert match, page.text
    return {"data": {"csrfmiddlewaretoken": match.group(1)},
            "headers": {"Cookie": f"csrftoken={page.cookies['csrftoken']}"}}


def order_id_of(query: str) -> str:
    match = re.search(r"orderId=([^&]+)", query)
    assert match
    return match.group(1)


def wait_for_status(server: Server, order_id: str, wanted: str, *, timeout: float = 10.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    state: dict[str, object] = {}
    while time.monotonic() < deadline:
        state = httpx.get(f"{server.url}/v1/order-status/{order_id}", timeout=5).json()
        if state["status"] == wanted:
            return state
        time.sleep(0.2)
    raise AssertionError(f"order {order_id} is {state.get('status')} after {timeout} s, not {wanted}:\n{server.logs()}")


def test_scan_pay_webhook_status(tmp_path: Path, seeded: tuple[str, list[str], str]) -> None:
    """The whole flow on a real Gunicorn (two workers) against the fake provider, and the machine
    making the drink."""
    database_url, queries, token = seeded
    port = base_environ(tmp_path)["GUNICORN_PORT"]
    webhook = f"http://127.0.0.1:{port}/v1/payments/webhook"
    with fake_provider(tmp_path, "--credentials", SECRETS, "--webhook-url", webhook) as provider, gunicorn(
        tmp_path, env=server_environ(tmp_path, database_url, provider.url, GUNICORN_PORT=port, GUNICORN_WORKERS="2")
    ) as server, httpx.Client(timeout=10) as browser:
        order_id = order_id_of(queries[0])
        machine_shows(server, token, order_id)

        order_page = browser.get(f"{server.url}/v1/pay?{queries[0]}")
        assert order_page.status_code == 200 and "Espresso" in order_page.text
        assert browser.get(f"{server.url}/v1/pay?{queries[0]}").status_code == 200  # scanned again: same order

        pay = browser.post(f"{server.url}/v1/orders/{order_id}/payment", **csrf(order_page))  # type: ignore[arg-type]
        assert pay.status_code == 303, pay.text
        confirmation = pay.headers["location"]
        assert confirmation.startswith(f"{provider.url}/confirm/")
        assert wait_for_status(server, order_id, "pending")["final"] is False

        assert "Pay" in browser.get(confirmation).text
        paid = browser.post(confirmation, data={"action": "succeed"})
        assert (paid.status_code, paid.headers["location"]) == (303, f"{server.url}/v1/orders/{order_id}")

        status_page = browser.get(paid.headers["location"])
        assert status_page.status_code == 200 and f"/v1/order-status/{order_id}" in status_page.text
        assert wait_for_status(server, order_id, "paid")["label"] == "Paid"
        assert "notified" in provider.logs() and '"status": "paid"' in provider.logs()

        machine = {"Authorization": f"Bearer {token}"}
        order = browser.get(f"{server.url}/v1/machine/orders/{order_id}", headers=machine).json()
        assert (order["paid"], order["amount_paid_kopecks"], order["drink_name"]) == (True, 9900, "Espresso")
        for outcome in ("make_pending", "successful"):
            report = browser.post(f"{server.url}/v1/machine/orders/{order_id}/report", json={"outcome": outcome},
                                  headers=machine)
            assert (report.status_code, report.json()["status"]) == (200, outcome), report.text
        assert wait_for_status(server, order_id, "successful")["final"] is True
        assert browser.get(f"{server.url}/v1/machine/orders/{order_id}").status_code == 401
        assert "Traceback" not in server.logs()


def test_a_slow_provider_does_not_hold_up_status_polls(tmp_path: Path, seeded: tuple[str, list[str], str]) -> None:
    """One worker: while a payment waits 1.5 s on the provider, status polls answer at once."""
    database_url, queries, token = seeded
    with fake_provider(tmp_path, "--credentials", SECRETS, "--latency", "1.5") as provider, gunicorn(
        tmp_path, env=server_environ(tmp_path, database_url, provider.url, GUNICORN_WORKERS="1")
    ) as server:
        order_id = order_id_of(queries[1])
        machine_shows(server, token, order_id)

        async def scenario() -> tuple[float, list[float]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                form = csrf(await client.get(f"/v1/pay?{queries[1]}"))

                async def pay() -> float:
                    started = time.monotonic()
                    response = await client.post(f"/v1/orders/{order_id}/payment", **form)  # type: ignore[arg-type]
                    assert response.status_code == 303, response.text
                    return time.monotonic() - started

                async def poll() -> list[float]:
                    await asyncio.sleep(0.2)  # the payment is waiting on the provider by now
                    latencies = []
                    for _ in range(10):  # bounded: 10 polls, about 1 s
                        started = time.monotonic()
                        assert (await client.get(f"/v1/order-status/{order_id}")).status_code == 200
                        latencies.append(time.monotonic() - started)
                        await asyncio.sleep(0.1)
                    return latencies

                return await asyncio.gather(pay(), poll())

        payment_seconds, poll_seconds = asyncio.run(scenario())
        assert payment_seconds >= 1.5
        assert max(poll_seconds) < 0.5, poll_seconds


def test_provider_down_leaves_the_order_payable(tmp_path: Path, seeded: tuple[str, list[str], str]) -> None:
    """Refused connection to the provider: a clear 503 page, the order is still `created`."""
    database_url, queries, token = seeded
    nothing_listens = f"http://127.0.0.1:{base_environ(tmp_path)['GUNICORN_PORT']}"
    with gunicorn(tmp_path, env=server_environ(tmp_path, database_url, nothing_listens, GUNICORN_WORKERS="1")) as server:
        order_id = order_id_of(queries[2])
        machine_shows(server, token, order_id)
        with httpx.Client(timeout=15) as browser:
            page = browser.get(f"{server.url}/v1/pay?{queries[2]}")
            response = browser.post(f"{server.url}/v1/orders/{order_id}/payment", **csrf(page))  # type: ignore[arg-type]
        assert response.status_code == 503
        assert "The payment service did not answer" in response.text and "Traceback" not in response.text
        assert wait_for_status(server, order_id, "created")["final"] is False


def test_twenty_simultaneous_webhook_confirmations_on_sqlite_are_all_applied(tmp_path: Path) -> None:
    """SQLite (whichever database the suite runs on), a real Gunicorn with two workers: 20 orders
    paid at once, their 20 notifications sent at once. Every one is answered 200 and every order
    ends paid: writers wait for SQLite's one write lock instead of failing "database is locked"."""
    orders = 20
    env = base_environ(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'webhooks.sqlite3'}")
    for command in (["migrate", "--noinput"], ["seed_demo"]):
        result = run([str(BIN / "python"), "manage.py", *command], env=env)
        assert result.returncode == 0, result.stderr
    with fake_provider_thread(credentials={"demo-shop": "demo-secret"}) as fake, gunicorn(
        tmp_path, env=server_environ(tmp_path, env["DATABASE_URL"], fake.url, GUNICORN_PORT=env["GUNICORN_PORT"],
                                     GUNICORN_WORKERS="2")
    ) as server, httpx.Client(base_url=server.url, timeout=10) as browser:
        order_ids = [f"sqlite-webhook-{number:02d}" for number in range(orders)]
        for order_id in order_ids:  # scan and Pay, one after the other: the customers
            page = browser.get(f"/v1/pay?deviceUuid=demo-machine-lobby&orderId={order_id}&drinkNo=2&size=2")
            assert page.status_code == 200, page.text
            assert browser.post(f"/v1/orders/{order_id}/payment", **csrf(page)).status_code == 303  # type: ignore[arg-type]
        notifications = [fake.app.settle(payment_id, "succeeded") for payment_id in list(fake.app.payments)]
        assert len(notifications) == orders

        async def notify_all() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as provider:
                return await asyncio.gather(*(provider.post("/v1/payments/webhook", json=body) for body in notifications))

        answers = asyncio.run(notify_all())
        assert [answer.status_code for answer in answers] == [200] * orders, server.logs()
        assert sorted(answer.json()["status"] for answer in answers) == ["paid"] * orders
        for order_id in order_ids:
            assert browser.get(f"/v1/order-status/{order_id}").json()["status"] == "paid"
        assert "database is locked" not in server.logs()
