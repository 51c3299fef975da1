"""End to end on real processes: Gunicorn + UvicornWorkers and the fake provider on loopback ports.

scan the QR link -> order page -> Pay -> provider's confirmation page -> Pay there -> the provider
notifies the webhook -> the status page's poll says paid.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from coffee_payment.conf import load_settings
from coffee_payment.conf_declarations import BY_KEY
from coffee_payment.conf_values import PROVIDER_RETRY_BACKOFF, provider_wait_longest
from devtools import postgres
from devtools.processes import BIN, Server, base_environ, fake_provider, gunicorn, run
from payments import orphans
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


SLOW_PROVIDER = 1.5  # seconds the fake provider takes to answer


def test_a_slow_provider_does_not_hold_up_status_polls(tmp_path: Path, seeded: tuple[str, list[str], str]) -> None:
    """One worker: while a payment waits 1.5 s on the provider, status polls answer at once."""
    database_url, queries, token = seeded
    with fake_provider(tmp_path, "--credentials", SECRETS, "--latency", str(SLOW_PROVIDER)) as provider, gunicorn(
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
        assert payment_seconds >= SLOW_PROVIDER
        # A poll held up behind the payment would wait for most of the provider's latency.
        assert max(poll_seconds) < SLOW_PROVIDER / 3, poll_seconds


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


# Without the provider's notification; a provider that hangs or fails ------------------------------

# How late past a bound that the settings give an answer may come on a loaded machine.
LATE = 1.0


def scan_url(server: Server, order_id: str) -> str:
    return f"{server.url}/v1/pay?deviceUuid=demo-machine-lobby&orderId={order_id}&drinkNo=2&size=2"


def page_poll_intervals(status_page: str) -> tuple[float, float]:
    """(first, then every) seconds between the status page's polls, read from its script."""
    first, every = re.search(r"setTimeout\(poll, (\d+)\);\s*\}\)\(\);", status_page), re.search(
        r"if \(polls < \d+\) setTimeout\(poll, (\d+)\)", status_page)
    assert first and every, status_page
    return int(first.group(1)) / 1000, int(every.group(1)) / 1000


def test_with_notifications_off_the_status_page_shows_paid_within_seconds(
    tmp_path: Path, seeded: tuple[str, list[str], str]
) -> None:
    """The provider never notifies: the return page and the status polls re-read the payment.
    The worst case: a poll claimed the order's read just before the customer confirmed; the next
    read is allowed ORDER_PROVIDER_RECHECK_SECONDS later, a poll comes within one interval of the
    page's script, and it waits ORDER_STATUS_PROVIDER_BUDGET_SECONDS at most for the provider."""
    database_url, _, token = seeded
    env = server_environ(tmp_path, database_url, "http://placeholder", GUNICORN_WORKERS="2")
    settings = load_settings(environ=env)
    recheck, budget = settings.order_provider_recheck_seconds, settings.order_status_provider_budget_seconds
    order_id = "confirm-without-notification"
    with fake_provider(tmp_path, "--credentials", SECRETS, "--no-notify") as provider, gunicorn(
        tmp_path, env={**env, "PAYMENT_PROVIDER_URL": f"{provider.url}/v3"}
    ) as server, httpx.Client(timeout=10) as browser:
        machine_shows(server, token, order_id)
        page = browser.get(scan_url(server, order_id))
        pay = browser.post(f"{server.url}/v1/orders/{order_id}/payment", **csrf(page))  # type: ignore[arg-type]
        assert pay.status_code == 303, pay.text

        def poll() -> str:
            return str(browser.get(f"{server.url}/v1/order-status/{order_id}").json()["status"])

        assert poll() == "pending"  # this poll claimed a provider read: the next waits `recheck`
        confirmed = time.monotonic()
        back = browser.post(pay.headers["location"], data={"action": "succeed"})
        status_page = browser.get(back.headers["location"])  # the return URL
        first, every = page_poll_intervals(status_page.text)
        bound = recheck + every + budget
        paid = 'data-status="paid"' in status_page.text
        delay = first
        while not paid and time.monotonic() - confirmed < bound + LATE:  # as the page's script polls
            time.sleep(delay)
            paid, delay = poll() == "paid", every
        took = time.monotonic() - confirmed
        print(f"confirmed -> paid on the status page: {took:.2f} s (bound {bound:g} s)")
        assert paid and took <= bound + LATE, (took, bound, server.logs())
        assert bound <= 5  # the defaults: paid on the page within 5 s of paying
        assert "notified" not in provider.logs() and "not sent (lost)" in provider.logs()
        # Without a poll just before it, the return page itself says paid.
        machine_shows(server, token, f"{order_id}-2")
        page = browser.get(scan_url(server, f"{order_id}-2"))
        pay = browser.post(f"{server.url}/v1/orders/{order_id}-2/payment", **csrf(page))  # type: ignore[arg-type]
        back = browser.post(pay.headers["location"], data={"action": "succeed"})
        assert 'data-status="paid"' in browser.get(back.headers["location"]).text
        # One provider read per order per `recheck`, across both workers.
        reads = len(re.findall(r'"GET /v3/payments/[^ ]+ HTTP/1.1" 200', provider.logs())) - 1
        assert 1 <= reads <= 1 + took / recheck + 1, (reads, took)
        assert "Traceback" not in server.logs()


@pytest.mark.parametrize("mode", ["hang", "error"])
def test_a_provider_that_hangs_or_fails_gives_the_503_page_in_time_and_the_order_stays_payable(
    tmp_path: Path, seeded: tuple[str, list[str], str], mode: str
) -> None:
    """The default layer's provider timeouts and retries (the testing layer shortens them): every
    attempt times out (hang) or is answered 500 at once (error), back-off between them; then the
    customer's 503 page, in Russian here, well before GUNICORN_TIMEOUT's plain 504."""
    database_url, _, token = seeded
    connect, read, retries = (BY_KEY[f"provider.{name}"].default
                              for name in ("connect_timeout", "read_timeout", "retries"))
    backoff = sum(PROVIDER_RETRY_BACKOFF * attempt for attempt in range(1, retries + 1))
    expected = backoff + ((1 + retries) * read if mode == "hang" else 0)
    order_id = f"provider-{mode}"
    env = {"PAYMENT_PROVIDER_CONNECT_TIMEOUT": str(connect), "PAYMENT_PROVIDER_READ_TIMEOUT": str(read),
           "PAYMENT_PROVIDER_RETRIES": str(retries), "GUNICORN_WORKERS": "1"}
    # A hung call answers 500 a second after its attempt gave up: the fake stops soon after.
    with fake_provider(tmp_path, "--credentials", SECRETS, "--fail", mode, "--hang-seconds", str(read + 1)) as provider, \
            gunicorn(tmp_path, env=server_environ(tmp_path, database_url, provider.url, **env)) as server, \
            httpx.Client(timeout=60, headers={"Accept-Language": "ru"}) as browser:
        machine_shows(server, token, order_id)
        page = browser.get(scan_url(server, order_id))
        started = time.monotonic()
        answer = browser.post(f"{server.url}/v1/orders/{order_id}/payment", **csrf(page))  # type: ignore[arg-type]
        took = time.monotonic() - started
        assert answer.status_code == 503 and "Платёжный сервис не ответил" in answer.text, answer.text
        assert expected <= took <= expected + LATE, (took, expected)
        assert provider_wait_longest(connect=connect, read=read, retries=retries) < 20  # ~10 s for a silent one
        assert wait_for_status(server, order_id, "created")["expired"] is False
        assert f'action="/v1/orders/{order_id}/payment"' in browser.get(f"{server.url}/v1/orders/{order_id}").text
        if mode == "error":  # (a hung call is logged once it ends)
            assert provider.logs().count('"POST /v3/payments HTTP/1.1" 500') == 1 + retries


def test_a_payment_whose_worker_died_before_storing_it_is_attached_or_returned_by_reconciliation(
    tmp_path: Path, seeded: tuple[str, list[str], str]
) -> None:
    """The provider has created the payment and its answer is on the way (--create-delay) when the
    worker serving Pay is killed: the order never hears of its payment, and no notification comes.
    The customer pays it anyway; staff mark the second order failed. A reconciliation run attaches
    the first payment (the order is paid) and refunds the second (its order cannot take it)."""
    database_url, _, token = seeded
    env = server_environ(tmp_path, database_url, "http://placeholder", GUNICORN_WORKERS="1", GUNICORN_TIMEOUT="8")
    settings = load_settings(environ=env)
    with fake_provider(tmp_path, "--credentials", SECRETS, "--no-notify", "--create-delay", "1.5") as provider, \
            gunicorn(tmp_path, env={**env, "PAYMENT_PROVIDER_URL": f"{provider.url}/v3"}) as server, \
            httpx.Client(timeout=10) as browser, httpx.Client(base_url=f"{provider.url}/v3", auth=tuple(
                SECRETS.split(":")), timeout=10) as api:  # type: ignore[arg-type]
        env["PAYMENT_PROVIDER_URL"] = f"{provider.url}/v3"
        created_at: float = 0.0
        for order_id in ("orphan-to-attach", "orphan-to-return"):
            machine_shows(server, token, order_id)
            page = browser.get(scan_url(server, order_id))
            [worker] = server.wait_for_workers(1)
            paying = BackgroundPost(browser, f"{server.url}/v1/orders/{order_id}/payment", **csrf(page))
            paying.start()
            payment = wait_for_provider_payment(api, order_id)
            created_at = time.monotonic()
            os.kill(worker, signal.SIGKILL)  # before the provider's answer reaches it
            paying.join(timeout=10)
            assert paying.error is not None and paying.response is None, paying.response
            assert httpx.post(payment["confirmation"]["confirmation_url"], data={"action": "succeed"}).status_code == 303
            assert wait_for_status(server, order_id, "created")["status"] == "created"  # it never heard of it
        result = run([str(BIN / "python"), "manage.py", "shell", "-c",
                      "from payments import services; services.order_mark_failed(order_id='orphan-to-return')"], env=env)
        assert result.returncode == 0, result.stderr

        # Listed once no request that made them can still be storing them (GUNICORN_TIMEOUT).
        time.sleep(max(created_at + settings.server.timeout + orphans.CLOCK_SKEW_SECONDS + 0.5 - time.monotonic(), 0))
        result = run([str(BIN / "python"), "manage.py", "reconcile_payments"], env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert set(result.stdout.splitlines()) == {"orphan attached: paid 1", "orphan refunded 1"}, result.stdout
        assert wait_for_status(server, "orphan-to-attach", "paid")["final"] is False
        assert wait_for_status(server, "orphan-to-return", "failed")["final"] is True
        refunds = api.get("/refunds").json()["items"]
        returned = wait_for_provider_payment(api, "orphan-to-return")
        assert [(r["payment_id"], r["amount"]["value"]) for r in refunds] == [(returned["id"], "159.00")]
        assert "Traceback" not in server.logs()
        # Run again: nothing left to do.
        again = run([str(BIN / "python"), "manage.py", "reconcile_payments"], env=env)
        assert (again.returncode, again.stdout) == (0, "nothing due\n"), again.stdout + again.stderr


class BackgroundPost(threading.Thread):
    """A POST in a thread of its own: its answer, or the transport error it ended with."""

    def __init__(self, client: httpx.Client, url: str, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.client, self.url, self.kwargs = client, url, kwargs
        self.response: httpx.Response | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.response = self.client.post(self.url, **self.kwargs)
        except httpx.TransportError as error:
            self.error = error


def wait_for_provider_payment(api: httpx.Client, order_id: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """The provider's payment for `order_id`, once the provider has it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in api.get("/payments", params={"limit": 100}).json()["items"]:
            if item["metadata"].get("order_id") == order_id:
                return item
        time.sleep(0.02)
    raise AssertionError(f"the provider has no payment for {order_id} after {timeout} s")
