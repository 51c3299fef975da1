"""The chaos run's coffee machines and customers.

Each machine shows one order at a time (its QR code) and polls it through the machine API; the
order's customer scans the code, presses Pay (with the page's CSRF pair, as a browser does),
confirms on the provider's page, comes back to the status page and polls it. What each one does
with an order comes from the seed: most pay and most drinks are made, some customers cancel, walk
away or pay too late, some machines fail, stay silent before or after starting, or report twice
(at once). A step without an answer, or answered 503, is tried again a bounded number of times, as
a person or a machine would; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from devtools.chaos_http import Client, Reply

CUSTOMER_PLANS = {"pays": 70, "cancels": 7, "abandons": 5, "scans_only": 5, "pays_twice_at_once": 8, "pays_late": 5}
MACHINE_PLANS = {"makes": 72, "fails_after_start": 6, "fails_before_start": 4, "silent_before_start": 5,
                 "silent_after_start": 3, "reports_twice": 10}


@dataclass(frozen=True)
class Timing:
    """Seconds (and counts) of the actors, derived from the server's settings by the run."""

    poll: float  # a machine's and a status page's poll interval
    patience: float  # how long a machine shows an order nobody has paid
    late: float  # how long a late customer stays on the provider's page (past the machine's patience)
    arrive: tuple[float, float] = (0.2, 2.0)  # a customer reaches the machine this long after its QR code shows
    make: tuple[float, float] = (1.0, 3.0)  # a drink takes this long
    attempts: int = 6  # of one step that got no answer or a 503
    pause: float = 1.0  # between two attempts
    watch_polls: int = 15  # status polls after paying, at most


@dataclass
class OrderRecord:
    order_id: str
    machine_index: int
    customer: str  # plan
    machine: str  # plan
    confirmed: str = ""  # "succeed" / "cancel": what the customer did on the provider's page (answered)
    started: bool = False  # make_pending answered 200: the machine pours
    made: bool = False  # successful answered 200
    unanswered: list[str] = field(default_factory=list)  # steps given up after every attempt


def _plan(rng: random.Random, plans: dict[str, int]) -> str:
    return rng.choices(list(plans), weights=list(plans.values()))[0]


@dataclass
class Fleet:
    url: str  # the server's base URL
    machines: Sequence[dict[str, str]]  # devtools.chaos_world's: device, shop, token
    drinks: Sequence[tuple[int, int]]  # (drink number, size) on every machine's menu
    client: Client
    timing: Timing
    seed: int
    deadline: float  # time.monotonic() after which no machine shows a new order
    budget: int  # at most this many orders in all
    silent_until: dict[int, float] = field(default_factory=dict)  # machine index -> end of its silence
    orders: dict[str, OrderRecord] = field(default_factory=dict)

    async def run(self) -> None:
        await asyncio.gather(*(self._machine(index) for index in range(len(self.machines))))

    async def _machine(self, index: int) -> None:
        """One machine's orders, one after the other, until the deadline or the budget; then it
        waits for its customers (each bounded)."""
        rng = random.Random(f"{self.seed}-{index}")
        customers = []
        number = 0
        while time.monotonic() < self.deadline and len(self.orders) < self.budget:
            number += 1
            drink_number, size = rng.choice(self.drinks)
            record = OrderRecord(order_id=f"chaos-{self.seed}-{index:02d}-{number:04d}", machine_index=index,
                                 customer=_plan(rng, CUSTOMER_PLANS), machine=_plan(rng, MACHINE_PLANS))
            self.orders[record.order_id] = record
            customer_rng, machine_rng = random.Random(rng.random()), random.Random(rng.random())
            customers.append(asyncio.ensure_future(self._customer(record, drink_number, size, customer_rng)))
            await self._machine_order(record, machine_rng)
        await asyncio.gather(*customers)

    def _silent(self, index: int) -> bool:
        return time.monotonic() < self.silent_until.get(index, 0.0)

    async def _reachable(self, index: int) -> None:
        """A silent machine holds its report until its silence ends."""
        await asyncio.sleep(max(0.0, self.silent_until.get(index, 0.0) - time.monotonic()))

    # The machine --------------------------------------------------------------------------------

    def _machine_headers(self, record: OrderRecord) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.machines[record.machine_index]['token']}"}

    async def _machine_order(self, record: OrderRecord, rng: random.Random) -> None:
        url = f"{self.url}/v1/machine/orders/{record.order_id}"
        state: dict[str, Any] = {}
        gives_up = time.monotonic() + self.timing.patience
        while time.monotonic() < gives_up:
            # A silent machine still shows its QR code, unaware that its polls are not getting through.
            reply = None if self._silent(record.machine_index) else await self.client.request(
                "machine-poll", url, headers=self._machine_headers(record))
            if reply is not None and reply.status == 200:
                state = reply.json()
                if state["can_make"] or state["final"]:
                    break
            await asyncio.sleep(self.timing.poll)
        if not state.get("can_make") or record.machine == "silent_before_start":
            return
        if record.machine == "fails_before_start":
            await self._report(record, "make_failed")
            return
        started = await self._report(record, "make_pending")
        if started is None or started.status != 200:  # 409 make_window_closed: not poured
            return
        record.started = True
        if record.machine == "silent_after_start":
            return
        await asyncio.sleep(rng.uniform(*self.timing.make))
        outcome = "make_failed" if record.machine == "fails_after_start" else "successful"
        made = await self._report(record, outcome)
        record.made = outcome == "successful" and made is not None and made.status == 200

    async def _report(self, record: OrderRecord, outcome: str) -> Reply | None:
        """The report, again until answered (not 503); a machine that reports twice sends two at once."""
        url = f"{self.url}/v1/machine/orders/{record.order_id}/report"
        copies = 2 if record.machine == "reports_twice" else 1
        for _attempt in range(self.timing.attempts):
            await self._reachable(record.machine_index)
            replies = await asyncio.gather(*(
                self.client.request("machine-report", url, method="POST", headers=self._machine_headers(record),
                                    body={"outcome": outcome}) for _ in range(copies)))
            answered = [reply for reply in replies if reply is not None and reply.status != 503]
            if answered:
                return min(answered, key=lambda reply: reply.status)  # a 200 if either got one
            await asyncio.sleep(self.timing.pause)
        record.unanswered.append(outcome)
        return None

    # The customer -------------------------------------------------------------------------------

    async def _step(self, record: OrderRecord, kind: str, url: str, **request: Any) -> Reply | None:
        for _attempt in range(self.timing.attempts):
            reply = await self.client.request(kind, url, **request)
            if reply is not None and reply.status != 503:
                return reply
            await asyncio.sleep(self.timing.pause)
        record.unanswered.append(kind)
        return None

    async def _customer(self, record: OrderRecord, drink_number: int, size: int, rng: random.Random) -> None:
        await asyncio.sleep(rng.uniform(*self.timing.arrive))
        device = self.machines[record.machine_index]["device"]
        page = await self._step(record, "scan", f"{self.url}/v1/pay?deviceUuid={device}&orderId={record.order_id}"
                                                f"&drinkNo={drink_number}&size={size}")
        if page is None or page.status != 200 or record.customer == "scans_only":
            return  # a machine offline (409) takes no order
        csrf = page.csrf()
        if csrf is None:
            raise AssertionError(f"order page of {record.order_id} without its CSRF pair: {page.body[:300]!r}")
        pay = {"method": "POST", "headers": {"Cookie": csrf["cookie"]}, "form": {"csrfmiddlewaretoken": csrf["token"]}}
        pay_url = f"{self.url}/v1/orders/{record.order_id}/payment"
        copies = 2 if record.customer == "pays_twice_at_once" else 1
        answers = await asyncio.gather(*(self._step(record, "pay", pay_url, **pay) for _ in range(copies)))
        redirected = [answer.location for answer in answers if answer is not None and answer.status == 303]
        confirmation = next((location for location in redirected if "/confirm/" in location), None)
        if confirmation is None or record.customer == "abandons":
            return
        if record.customer == "pays_late":
            await asyncio.sleep(self.timing.late)
        action = "cancel" if record.customer == "cancels" else "succeed"
        back = await self._step(record, "confirm", confirmation, method="POST", form={"action": action})
        if back is None or back.status != 303:
            return
        record.confirmed = action
        await self._step(record, "status-page", back.location)
        status_url = f"{self.url}/v1/order-status/{record.order_id}"
        for _poll in range(self.timing.watch_polls):
            await asyncio.sleep(self.timing.poll)
            reply = await self.client.request("status-poll", status_url)
            if reply is not None and reply.status == 200 and reply.json()["final"]:
                return
