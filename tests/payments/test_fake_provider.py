"""The fake provider speaks the protocol the client relies on (in-process, over httpx's ASGI transport)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from payments.fake_provider import FakeProvider, main

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


async def test_failure_modes(client: tuple[FakeProvider, httpx.AsyncClient]) -> None:
    app, http = client
    app.fail = "error"
    assert (await create(http)).status_code == 500
    app.fail = "flaky"
    assert [(await create(http, key="k-2")).status_code for _ in range(2)] == [500, 200]


@pytest.mark.parametrize("argv", [["--port", "0"], ["--latency", "1e3"], ["--fail", "sometimes"], ["--credentials", "shop"]])
def test_bad_command_line_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "error: argument" in capsys.readouterr().err
