"""The fake provider speaks the protocol the client relies on (in-process, over httpx's ASGI transport)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devtools.fake_provider import FAIL_MODES, FakeProvider, main

BODY = {"amount": {"value": "99.00", "currency": "RUB"}, "capture": True,
        "confirmation": {"type": "redirect", "return_url": "http://shop.test/back"}, "metadata": {"order_id": "o-1"}}


@pytest.fixture
async def client() -> AsyncIterator[tuple[FakeProvider, httpx.AsyncClient]]:
    app = FakeProvider(credentials={"shop": "secret"})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fake.test", auth=("shop", "secret")) as http:
        yield app, http


async def create(http: httpx.AsyncClient, key: str = "k-1", body: dict[str, Any] = BODY) -> httpx.Response:
    return await http.post("/v3/payments", content=json.dumps(body), headers={"Idempotence-Key": key})


async def test_same_key_same_payment_other_body_refused(client: tuple[FakeProvider, httpx.AsyncClient]) -> None:
    app, http = client
    first, again = await create(http), await create(http)
    assert first.status_code == again.status_code == 200 and first.json()["id"] == again.json()["id"]
    other = await create(http, body={**BODY, "amount": {"value": "1.00", "currency": "RUB"}})
    assert (other.status_code, other.json()["parameter"]) == (400, "Idempotence-Key")
    assert len(app.payments) == 1


@pytest.mark.parametrize(
    ("auth", "headers", "status"),
    [(("shop", "wrong"), {"Idempotence-Key": "k"}, 401), (("other", "secret"), {"Idempotence-Key": "k"}, 401),
     (("shop", "secret"), {}, 400)],
)
async def test_credentials_and_key_are_required(client: tuple[FakeProvider, httpx.AsyncClient], auth: Any,
                                                headers: dict[str, str], status: int) -> None:
    _, http = client
    response = await http.post("/v3/payments", content=json.dumps(BODY), headers=headers, auth=auth)
    assert response.status_code == status and response.json()["type"] == "error"


async def test_confirmation_page_settles_and_notifies(client: tuple[FakeProvider, httpx.AsyncClient]) -> None:
    app, http = client
    payment = (await create(http)).json()
    path = payment["confirmation"]["confirmation_url"].removeprefix("http://fake.test")
    assert 'value="succeed"' in (await http.get(path)).text
    response = await http.post(path, data={"action": "succeed"})
    assert (response.status_code, response.headers["location"]) == (303, "http://shop.test/back")
    assert [n["event"] for n in app.notifications] == ["payment.succeeded"]
    read = (await http.get(f"/v3/payments/{payment['id']}")).json()
    assert (read["status"], read["paid"], "confirmation" in read) == ("succeeded", True, False)
    await http.post(path, data={"action": "cancel"})  # settled payments stay settled
    assert (await http.get(f"/v3/payments/{payment['id']}")).json()["status"] == "succeeded"


async def test_notifications_can_be_switched_off_or_lost_for_a_share_of_payments(
    client: tuple[FakeProvider, httpx.AsyncClient],
) -> None:
    app, http = client

    async def pay(key: str) -> None:
        payment = (await create(http, key=key)).json()
        path = payment["confirmation"]["confirmation_url"].removeprefix("http://fake.test")
        assert (await http.post(path, data={"action": "succeed"})).status_code == 303

    app.notify = False
    await pay("k-off")
    assert (app.notifications, [n["event"] for n in app.lost]) == ([], ["payment.succeeded"])
    app.notify, app.lost_notifications = True, 0.5
    for number in range(40):
        await pay(f"k-{number}")
    lost = {n["object"]["id"] for n in app.lost} - {app.lost[0]["object"]["id"]}
    sent = {n["object"]["id"] for n in app.notifications}
    assert len(lost) + len(sent) == 40 and not lost & sent
    assert 10 <= len(lost) <= 30  # each payment loses its notifications with a chance of one half
    assert lost == {p.id for p in app.payments.values() if not p.notifies} - {app.lost[0]["object"]["id"]}


async def test_a_creation_answered_late_exists_before_its_answer(client: tuple[FakeProvider, httpx.AsyncClient]) -> None:
    app, http = client
    app.create_delay = 0.5
    answer = asyncio.ensure_future(create(http))
    await asyncio.sleep(0.25)
    assert not answer.done() and len(app.payments) == 1
    assert (await answer).json()["id"] == next(iter(app.payments))


async def test_failure_modes(client: tuple[FakeProvider, httpx.AsyncClient]) -> None:
    app, http = client
    app.fail = "error"
    assert (await create(http)).status_code == 500
    app.fail = "flaky"
    assert [(await create(http, key="k-2")).status_code for _ in range(2)] == [500, 200]


@pytest.mark.parametrize("argv", [["--port", "0"], ["--latency", "1e3"], ["--fail", "sometimes"], ["--credentials", "shop"],
                                  ["--hold-seconds", "0"], ["--hold-seconds", "604801"],
                                  ["--lost-notifications", "1.5"], ["--create-delay", "-1"]])
def test_bad_command_line_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_help_says_what_every_failure_mode_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert exited.value.code == 0
    for mode, effect in FAIL_MODES.items():
        assert f"{mode}: {' '.join(effect.split())}" in shown


async def test_a_live_shops_payments_are_not_test_payments(client: tuple[FakeProvider, httpx.AsyncClient]) -> None:
    app, http = client
    assert (await create(http)).json()["test"] is True
    app.live_shops.add("shop")
    assert (await create(http, key="k-live")).json()["test"] is False


async def test_shops_see_only_their_own_payments_and_refunds() -> None:
    app = FakeProvider(credentials={"shop": "secret", "other": "secret-2"})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fake.test", auth=("shop", "secret")) as http:
        payment = (await create(http)).json()
        app.settle(payment["id"], "succeeded")
        refund = {"payment_id": payment["id"], "amount": {"value": "1.00", "currency": "RUB"}}
        assert (await http.post("/v3/refunds", json=refund, headers={"Idempotence-Key": "r"})).status_code == 200
        other = ("other", "secret-2")
        assert (await http.get(f"/v3/payments/{payment['id']}", auth=other)).status_code == 404
        assert (await http.get("/v3/payments", auth=other)).json() == {"type": "list", "items": []}
        assert (await http.get("/v3/refunds", auth=other)).json() == {"type": "list", "items": []}
        stolen = await http.post("/v3/refunds", json=refund, headers={"Idempotence-Key": "r"}, auth=other)
        assert (stolen.status_code, stolen.json()["parameter"]) == (400, "payment_id")
        assert len(app.refunds) == 1


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "parameter"),
    [("POST", "/v3/payments/{id}/capture", {}, None, 400, "Idempotence-Key"),
     ("POST", "/v3/payments/{id}/cancel", {}, None, 400, "Idempotence-Key"),
     ("POST", "/v3/refunds", {}, None, 400, "Idempotence-Key"),
     ("POST", "/v3/payments/{id}/capture", {"Idempotence-Key": "c"}, b"[1]", 400, None),
     ("POST", "/v3/payments/{id}/cancel", {"Idempotence-Key": "c"}, b"{", 400, None),
     ("POST", "/v3/payments/{id}/refund", {"Idempotence-Key": "c"}, None, 404, None),
     ("DELETE", "/v3/payments/{id}", {}, None, 404, None),
     ("GET", "/v3/payments/{id}/capture", {}, None, 404, None),
     ("GET", "/v3/payments?limit=101", {}, None, 400, "limit"),
     ("GET", "/v3/payments?status=pending&status=canceled", {}, None, 400, "status"),
     ("GET", "/v3/refunds?payment_method=bank_card", {}, None, 400, "payment_method"),
     ("GET", "/v3/refunds?created_at.gte=2026-11-30T05:00:00", {}, None, 400, "created_at.gte")],
)
async def test_malformed_api_calls_get_error_objects(client: tuple[FakeProvider, httpx.AsyncClient], method: str, path: str,
                                                     headers: dict[str, str], body: bytes | None, status: int,
                                                     parameter: str | None) -> None:
    app, http = client
    payment = (await create(http, body={**BODY, "capture": False})).json()
    app.settle(payment["id"], "waiting_for_capture")
    response = await http.request(method, path.format(id=payment["id"]), headers=headers, content=body)
    error = response.json()
    assert (response.status_code, error["type"], error.get("parameter")) == (status, "error", parameter)
    assert error["code"] == ("not_found" if status == 404 else "invalid_request")
    assert app.payments[payment["id"]].status == "waiting_for_capture"


@pytest.mark.parametrize(
    ("change", "parameter"),
    [({"capture": "yes"}, "capture"), ({"metadata": {"k": 1}}, "metadata"), ({"metadata": {"k" * 33: "v"}}, "metadata"),
     ({"payment_method_data": {"type": "cash"}}, "payment_method_data.type"),
     ({"amount": {"value": "0.00", "currency": "RUB"}}, "amount.value"),
     ({"amount": {"value": "1.00", "currency": "USD"}}, "amount.currency")],
)
async def test_bad_payment_requests_name_the_parameter(client: tuple[FakeProvider, httpx.AsyncClient],
                                                       change: dict[str, Any], parameter: str) -> None:
    app, http = client
    response = await create(http, body={**BODY, **change})
    assert (response.status_code, response.json()["parameter"]) == (400, parameter)
    assert app.payments == {}


async def test_a_hold_is_paid_on_the_page_and_captured_once(client: tuple[FakeProvider, httpx.AsyncClient]) -> None:
    app, http = client
    payment = (await create(http, body={**BODY, "capture": False, "payment_method_data": {"type": "bank_card"}})).json()
    assert payment["payment_method"] == {"type": "bank_card", "id": payment["id"], "saved": False}
    page = payment["confirmation"]["confirmation_url"].removeprefix("http://fake.test")
    assert "Two-stage" in (await http.get(page)).text
    await http.post(page, data={"action": "succeed"})
    held = (await http.get(f"/v3/payments/{payment['id']}")).json()
    assert (held["status"], held["paid"], held["payment_method"]["card"]["last4"]) == ("waiting_for_capture", True, "4444")
    capture = {"amount": {"value": "50.00", "currency": "RUB"}}
    answers = [await http.post(f"/v3/payments/{payment['id']}/capture", json=capture, headers={"Idempotence-Key": "c"})
               for _ in range(2)]
    assert [a.json()["amount"]["value"] for a in answers] == ["50.00", "50.00"]
    assert [n["event"] for n in app.notifications] == ["payment.waiting_for_capture", "payment.succeeded"]
