"""The fake provider's receipts and SBP, in-process over httpx: each refusal names its parameter, the
confirmation page offers what the payment allows, registrations and SBP refunds settle later."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devtools.fake_provider import FakeProvider, main

LINE = {"description": "Капучино, средний", "quantity": "1.000", "amount": {"value": "159.00", "currency": "RUB"},
        "vat_code": 11, "payment_subject": "commodity", "payment_mode": "full_payment", "measure": "piece"}
RECEIPT = {"customer": {"email": "ivan@example.ru"}, "items": [LINE], "tax_system_code": 2}
BODY = {"amount": {"value": "159.00", "currency": "RUB"}, "capture": True, "receipt": RECEIPT,
        "confirmation": {"type": "redirect", "return_url": "http://shop.test/back"}, "metadata": {"order_id": "o-1"}}


@pytest.fixture
async def client() -> AsyncIterator[tuple[FakeProvider, httpx.AsyncClient]]:
    app = FakeProvider(credentials={"shop": "secret"}, receipt_seconds=0, sbp_refund_seconds=0.2)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fake.test", auth=("shop", "secret")) as http:
        yield app, http
        await app.aclose()


async def post(http: httpx.AsyncClient, path: str, body: dict[str, Any], key: str = "k-1") -> httpx.Response:
    return await http.post(path, content=json.dumps(body), headers={"Idempotence-Key": key})


def changed(path: str, value: Any) -> dict[str, Any]:
    """BODY with the value at `path` ("receipt.items.0.vat_code") replaced, or removed when value is ..."""
    body = copy.deepcopy(BODY)
    *parents, last = path.split(".")
    target: Any = body
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is ...:
        del target[int(last) if last.isdigit() else last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return body


@pytest.mark.parametrize(("path", "value", "parameter"), [
    ("receipt", "yes", "receipt"),
    ("receipt.customer", ..., "receipt.customer"),
    ("receipt.customer", {"full_name": "Ivan Petrov"}, "receipt.customer"),
    ("receipt.customer.email", "ivan@", "receipt.customer.email"),
    ("receipt.customer", {"phone": "+7 900 123-45-67"}, "receipt.customer.phone"),
    ("receipt.tax_system_code", 7, "receipt.tax_system_code"),
    ("receipt.items", [], "receipt.items"),
    ("receipt.items.0.vat_code", 13, "receipt.items[0].vat_code"),
    ("receipt.items.0.vat_code", "11", "receipt.items[0].vat_code"),
    ("receipt.items.0.vat_code", ..., "receipt.items[0].vat_code"),
    ("receipt.items.0.payment_subject", "coffee", "receipt.items[0].payment_subject"),
    ("receipt.items.0.payment_mode", "later", "receipt.items[0].payment_mode"),
    ("receipt.items.0.measure", "cup", "receipt.items[0].measure"),
    ("receipt.items.0.description", "x" * 129, "receipt.items[0].description"),
    ("receipt.items.0.quantity", "0", "receipt.items[0].quantity"),
    ("receipt.items.0.quantity", "1.0001", "receipt.items[0].quantity"),
    ("receipt.items.0.amount.value", "158.99", "receipt.items"),
    ("receipt.items.0.quantity", "2", "receipt.items"),
    ("payment_method_data", {"type": "sbp"}, "capture"),  # BODY with capture false below
])
async def test_a_bad_receipt_is_refused_naming_the_parameter_and_never_the_contact(
    client: tuple[FakeProvider, httpx.AsyncClient], path: str, value: Any, parameter: str
) -> None:
    app, http = client
    body = changed(path, value)
    if path == "payment_method_data":
        body["capture"] = False
    response = await post(http, "/v3/payments", body)
    error = response.json()
    assert (response.status_code, error["code"], error["parameter"]) == (400, "invalid_request", parameter)
    assert "ivan" not in response.text and "123-45-67" not in response.text
    assert app.payments == {}


async def test_lines_that_add_up_in_several_parts_are_taken(client: tuple[FakeProvider, httpx.AsyncClient]) -> None:
    _, http = client
    two = [{**LINE, "amount": {"value": "79.50", "currency": "RUB"}, "quantity": "2"}]
    assert (await post(http, "/v3/payments", changed("receipt.items", two))).status_code == 200


async def test_a_receipt_is_registered_once_paid_and_canceled_with_the_payment(
    client: tuple[FakeProvider, httpx.AsyncClient]
) -> None:
    app, http = client
    created = (await post(http, "/v3/payments", BODY)).json()
    assert created["receipt_registration"] == "pending"
    app.settle(created["id"], "succeeded")
    assert (await http.get(f"/v3/payments/{created['id']}")).json()["receipt_registration"] == "succeeded"
    dropped = (await post(http, "/v3/payments", BODY, key="k-2")).json()
    app.settle(dropped["id"], "canceled")
    assert (await http.get(f"/v3/payments/{dropped['id']}")).json()["receipt_registration"] == "canceled"
    plain = (await post(http, "/v3/payments", changed("receipt", ...), key="k-3")).json()
    assert "receipt_registration" not in plain


async def test_a_part_of_a_receipts_payment_needs_the_receipt_of_that_part(
    client: tuple[FakeProvider, httpx.AsyncClient]
) -> None:
    app, http = client
    held = (await post(http, "/v3/payments", {**BODY, "capture": False})).json()
    app.settle(held["id"], "waiting_for_capture")
    part = {"amount": {"value": "100.00", "currency": "RUB"}}
    refused = await post(http, f"/v3/payments/{held['id']}/capture", part, key="c-1")
    assert (refused.status_code, refused.json()["parameter"]) == (400, "receipt")
    part_receipt = {**RECEIPT, "items": [{**LINE, "amount": {"value": "100.00", "currency": "RUB"}}]}
    captured = await post(http, f"/v3/payments/{held['id']}/capture", {**part, "receipt": part_receipt}, key="c-2")
    assert captured.json()["status"] == "succeeded"

    refund = {"payment_id": held["id"], "amount": {"value": "40.00", "currency": "RUB"}}
    refused = await post(http, "/v3/refunds", refund, key="r-1")
    assert (refused.status_code, refused.json()["parameter"]) == (400, "receipt")
    wrong = {**RECEIPT, "items": [{**LINE, "amount": {"value": "41.00", "currency": "RUB"}}]}
    assert (await post(http, "/v3/refunds", {**refund, "receipt": wrong}, key="r-2")).json()["parameter"] == "receipt.items"
    right = {**RECEIPT, "items": [{**LINE, "amount": {"value": "40.00", "currency": "RUB"}}]}
    partly = (await post(http, "/v3/refunds", {**refund, "receipt": right}, key="r-3")).json()
    rest = (await post(http, "/v3/refunds", {**refund, "amount": {"value": "60.00", "currency": "RUB"},
                                              "receipt": {**right, "items": [{**LINE, "amount": {"value": "60.00", "currency": "RUB"}}]}},
                       key="r-4")).json()
    assert [partly["status"], rest["status"]] == ["succeeded", "succeeded"]
    assert (await http.get(f"/v3/refunds/{partly['id']}")).json()["receipt_registration"] == "succeeded"


async def test_the_page_offers_sbp_only_where_it_can_pay(client: tuple[FakeProvider, httpx.AsyncClient]) -> None:
    app, http = client
    pages = {}
    for key, body in (("any", BODY), ("hold", {**BODY, "capture": False}),
                      ("sbp", {**BODY, "payment_method_data": {"type": "sbp"}})):
        payment = (await post(http, "/v3/payments", body, key=key)).json()
        path = payment["confirmation"]["confirmation_url"].removeprefix("http://fake.test")
        pages[key] = (payment["id"], path, (await http.get(path)).text)
    assert 'value="bank_card"' in pages["any"][2] and 'value="sbp"' in pages["any"][2]
    assert 'value="sbp"' not in pages["hold"][2] and 'value="bank_card"' not in pages["sbp"][2]
    refused = await http.post(pages["hold"][1], data={"action": "succeed", "method": "sbp"})
    assert (refused.status_code, refused.json()["parameter"]) == (400, "method")
    await http.post(pages["any"][1], data={"action": "succeed", "method": "sbp"})
    paid = app.payments[pages["any"][0]].as_json()
    assert (paid["status"], paid["payment_method"]["type"]) == ("succeeded", "sbp")
    assert set(paid["payment_method"]) == {"type", "id", "saved", "sbp_operation_id", "payer_bank_details"}


async def test_an_sbp_refund_is_pending_until_the_bank_confirms_then_notified(
    client: tuple[FakeProvider, httpx.AsyncClient]
) -> None:
    app, http = client
    payment = (await post(http, "/v3/payments", {**BODY, "payment_method_data": {"type": "sbp"}})).json()
    app.settle(payment["id"], "succeeded")
    refund = (await post(http, "/v3/refunds", {"payment_id": payment["id"], "amount": BODY["amount"]}, key="r")).json()
    assert (refund["status"], refund["refund_method"]["type"]) == ("pending", "sbp")
    assert [n["event"] for n in app.notifications] == []
    for _ in range(50):  # its timer: 0.2 s
        if app.notifications:
            break
        await asyncio.sleep(0.05)
    assert [(n["event"], n["object"]["status"]) for n in app.notifications] == [("refund.succeeded", "succeeded")]
    assert (await http.get(f"/v3/refunds/{refund['id']}")).json()["receipt_registration"] == "succeeded"


@pytest.mark.parametrize("argv", [["--receipt-seconds", "x"], ["--sbp-refund-seconds", "3601"]])
def test_bad_receipt_and_sbp_options_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and "error: argument" in capsys.readouterr().err
