"""The fake provider's faults switched while it runs (`POST /control`): API answers, and
notifications lost, repeated, delayed and reordered on their way to a real webhook receiver."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devtools.fake_provider import FakeProvider
from tests.devtools.test_fake_provider_conformance import Webhook, webhook  # noqa: F401 (a fixture)
from tests.support.fake_provider import RunningFake, fake_provider_thread

SHOP, SECRET = "faults-shop", "faults-secret"
BODY = {"amount": {"value": "99.00", "currency": "RUB"}, "capture": True,
        "confirmation": {"type": "redirect", "return_url": "http://shop.test/back"}, "metadata": {"order_id": "o-1"}}


@pytest.fixture
def running(webhook: Webhook) -> Iterator[RunningFake]:  # noqa: F811 (the fixture above)
    webhook.received.clear()
    with fake_provider_thread(credentials={SHOP: SECRET}, webhook_url=webhook.url) as fake:
        yield fake


def api(fake: RunningFake) -> httpx.Client:
    return httpx.Client(base_url=fake.api_url, auth=(SHOP, SECRET), timeout=10)


def control(fake: RunningFake, **body: Any) -> dict[str, Any]:
    answer = httpx.post(f"{fake.url}/control", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def pay(fake: RunningFake) -> str:
    """A payment created and paid on the confirmation page, as a customer does; its id."""
    with api(fake) as client:
        payment = client.post("/payments", json=BODY, headers={"Idempotence-Key": str(uuid.uuid4())}).json()
    answer = httpx.post(payment["confirmation"]["confirmation_url"], data={"action": "succeed"}, timeout=10)
    assert answer.status_code == 303
    return payment["id"]


def received(webhook: Webhook, *, count: int, within: float) -> list[str]:  # noqa: F811
    """The payment ids of the notifications the webhook got, once it has `count` (or `within` s passed)."""
    deadline = time.monotonic() + within
    while len(webhook.received) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return [notification["object"]["id"] for notification in webhook.received]


def test_the_api_fails_as_told_while_it_runs(running: RunningFake) -> None:
    with api(running) as client:
        def create() -> httpx.Response:
            return client.post("/payments", content=json.dumps(BODY), headers={"Idempotence-Key": "k-1"})

        assert control(running, fail="429")["fail"] == "429"
        refused = create()
        assert (refused.status_code, refused.headers["retry-after"], refused.json()["code"]) == (
            429, "1", "too_many_requests")
        control(running, fail="error")
        assert create().status_code == 500
        state = control(running, fail="none", latency=0.3)
        assert (state["fail"], state["latency"]) == ("none", 0.3)
        started = time.monotonic()
        assert create().status_code == 200 and time.monotonic() - started >= 0.3
        assert httpx.get(f"{running.url}/control").json()["latency"] == 0.3


@pytest.mark.parametrize(("body", "key"), [
    ({"fail": "sometimes"}, "fail"), ({"latency": -1}, "latency"), ({"latency": "1"}, "latency"),
    ({"hang_seconds": 1e9}, "hang_seconds"), ({"notifications": {"lose": 2}}, "notifications.lose"),
    ({"notifications": {"reorder": 1}}, "notifications.reorder"), ({"notifications": {"drop": 1}}, "notifications.drop"),
    ({"notifications": []}, "notifications"), ({"seed": 1.5}, "seed"), ({"colour": "red"}, "colour"), ([], "body"),
])
async def test_a_bad_control_is_refused_naming_the_key(body: Any, key: str) -> None:
    app = FakeProvider()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fake.test") as client:
        answer = await client.post("/control", json=body)
    assert (answer.status_code, answer.json()["parameter"]) == (400, key)
    assert app.fail == "none" and app.notification_faults.as_json() == {"lose": 0.0, "repeat": 0.0, "delay": 0.0,
                                                                        "reorder": False}


def test_reordered_notifications_are_held_back_then_sent_newest_first(running: RunningFake, webhook: Webhook  # noqa: F811
                                                                      ) -> None:
    control(running, notifications={"reorder": True})
    paid = [pay(running) for _ in range(3)]
    assert received(webhook, count=1, within=0.5) == []
    assert control(running)["held"] == 3
    state = control(running, notifications={})
    assert received(webhook, count=3, within=5) == paid[::-1]
    assert state["faulted"] == {"reordered": 3} and state["notifications"]["reorder"] is False


def test_repeated_delayed_and_lost_notifications(running: RunningFake, webhook: Webhook) -> None:  # noqa: F811
    control(running, notifications={"repeat": 1.0}, seed=1)
    first = pay(running)
    assert received(webhook, count=2, within=5) == [first, first]

    webhook.received.clear()
    control(running, notifications={"delay": 3.0}, seed=7)  # this seed draws a delay of about 2 s
    late = pay(running)  # the page answers without waiting for the notification
    assert webhook.received == []
    assert received(webhook, count=1, within=5) == [late]

    webhook.received.clear()
    control(running, notifications={"lose": 1.0})
    lost = pay(running)
    assert received(webhook, count=1, within=0.5) == []
    assert [n["object"]["id"] for n in running.app.lost] == [lost]
    state = control(running, notifications={})
    assert state["faulted"] == {"repeated": 1, "delayed": 1, "lost": 1}
    assert state["webhook_answers"] == {"200": 3} and state["sending"] == 0
