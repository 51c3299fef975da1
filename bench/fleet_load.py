"""An open-loop load generator for the fleet benchmark: requests leave on a schedule, not on answers.

A closed loop (wrk, a pool of users) sends the next request when the previous one is answered, so a
slow server is sent less and the wait for a busy server is never measured (coordinated omission).
Here every request has a planned send time fixed before the run; its latency is measured from that
planned time to the end of the answer, so time spent queued behind a slow server, in the client's
connection pool or in a late event loop counts. The generator's own lag (actual minus planned send
time) is reported beside it, so a figure limited by the client shows as such.

Traffic:
- machines: each polls `GET /v1/machine/orders/<its order>` with its bearer token every
  `interval` seconds, from a random phase;
- status pages: each polls `GET /v1/order-status/<order>` every `interval` seconds, from a random
  phase (payments/templates/payments/status.html polls every 2 s);
- customers arrive as a Poisson process: each scans (`GET /v1/pay?...`, which creates the order),
  pays (`POST /v1/orders/<id>/payment`) as soon as the page is there, confirms on the provider's
  page, which sends it back to the status page (`GET /v1/orders/<id>`, kind status-page), whose
  script polls 1 s later, then every `poll_interval`, until it shows paid (at most `polls` times).
  The confirmation latency runs from the confirmation's send to the answer that first said paid.
  A customer waits for each answer, as a person does; the arrivals do not wait for anyone.

Bounded: arrivals only during `seconds` (a customer's polls until paid may end after them); every
request times out after `timeout`; at most `max_in_flight` requests at once, a request planned past
that is dropped and counted (the safety valve, not a way to slow the load); the whole run is cut at
seconds + 30 + (timeout + poll_interval) * (polls + 4) s.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# The payment form's CSRF pair, as bench/lua/orders.lua sends it: Django accepts a 32-character
# secret of letters and digits as cookie and header token.
CSRF_TOKEN = "benchCsrfToken0123456789abcdefgh"
KINDS = ("machine-poll", "status-poll", "scan", "payment", "status-page")
# The status page's script polls this long after the page loaded, then every poll interval.
FIRST_POLL = 1.0


@dataclass(frozen=True)
class Machine:
    device: str
    token: str
    order: str


@dataclass(frozen=True)
class Plan:
    """One run's offered load."""

    seconds: float
    machines: Sequence[Machine] = ()
    machine_interval: float = 5.0
    status_pages: Sequence[str] = ()  # order ids
    status_interval: float = 2.0
    customers_per_s: float = 0.0
    customer_devices: Sequence[str] = ()
    customer_polls: int = 5
    customer_poll_interval: float = 2.0
    order_prefix: str = "fleet-customer-"
    seed: int = 1

    def offered(self) -> dict[str, float]:
        """Requests per second offered by kind (customer polls at their steady-state rate)."""
        return {
            "machine-poll": len(self.machines) / self.machine_interval,
            "status-poll": len(self.status_pages) / self.status_interval + self.customers_per_s * self.customer_polls,
            "scan": self.customers_per_s,
            "payment": self.customers_per_s,
            "status-page": self.customers_per_s,
        }


@dataclass
class Tally:
    """What happened to the requests of one kind."""

    latencies: list[float] = field(default_factory=list)  # seconds, planned time to answer, 2xx/3xx only
    lags: list[float] = field(default_factory=list)  # seconds, actual send minus planned send
    planned: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # "http 503", "timeout", "dropped", ...

    def row(self, *, seconds: float) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        lags = sorted(self.lags)
        return {
            "planned": self.planned, "ok": len(ordered), "failed": sum(self.failures.values()),
            "failures": dict(self.failures), "ok_per_s": round(len(ordered) / seconds, 1),
            **{f"p{q}_ms": _ms(percentile(ordered, q)) for q in (50, 90, 99)},
            "max_ms": _ms(ordered[-1] if ordered else None),
            "lag_p99_ms": _ms(percentile(lags, 99)),
        }


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values; None for no values."""
    if not ordered:
        return None
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


@dataclass
class Confirmations:
    """Confirm at the provider -> the status page shows paid, per customer who confirmed."""

    latencies: list[float] = field(default_factory=list)  # seconds
    unconfirmed: int = 0  # confirmed, but not shown paid by the last poll
    failed: int = 0  # the confirmation itself got no answer

    def row(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {"confirmed": len(ordered), "unconfirmed": self.unconfirmed, "failed": self.failed,
                **{f"p{q}_ms": _ms(percentile(ordered, q)) for q in (50, 90, 99)},
                "max_ms": _ms(ordered[-1] if ordered else None)}


@dataclass(frozen=True)
class Reply:
    status: int
    location: str
    body: bytes


@dataclass
class Run:
    url: str
    timeout: float
    max_in_flight: int
    session: aiohttp.ClientSession
    start: float
    tallies: dict[str, Tally] = field(default_factory=lambda: {kind: Tally() for kind in KINDS})
    confirmations: Confirmations = field(default_factory=Confirmations)
    in_flight: int = 0

    async def request(self, kind: str, planned: float, method: str, path: str,
                      headers: dict[str, str] | None = None) -> Reply | None:
        """One request planned for `planned` (loop time): its answer if it was a 2xx or 3xx."""
        tally = self.tallies[kind]
        tally.planned += 1
        if self.in_flight >= self.max_in_flight:
            tally.failures["dropped"] += 1
            return None
        self.in_flight += 1
        loop = asyncio.get_running_loop()
        tally.lags.append(max(loop.time() - planned, 0.0))
        try:
            async with asyncio.timeout(self.timeout):
                async with self.session.request(method, path if "://" in path else self.url + path, headers=headers,
                                                allow_redirects=False) as response:
                    reply = Reply(response.status, response.headers.get("Location", ""), await response.read())
        except TimeoutError:
            tally.failures["timeout"] += 1
            return None
        except aiohttp.ClientError as error:
            tally.failures[type(error).__name__] += 1
            return None
        finally:
            self.in_flight -= 1
        if reply.status >= 400:
            tally.failures[f"http {reply.status}"] += 1
            return None
        tally.latencies.append(loop.time() - planned)
        return reply

    async def confirm(self, url: str) -> str | None:
        """The customer presses Pay on the provider's page: where it sends them back, or None."""
        try:
            async with asyncio.timeout(self.timeout):
                async with self.session.post(url, data={"action": "succeed"}, allow_redirects=False) as response:
                    await response.read()
                    return response.headers.get("Location") if response.status == 303 else None
        except (TimeoutError, aiohttp.ClientError):
            return None


async def _sleep_until(moment: float) -> None:
    delay = moment - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _customer(run: Run, plan: Plan, *, number: int, device: str, planned: float) -> None:
    order = f"{plan.order_prefix}{number:06d}"
    loop = asyncio.get_running_loop()
    # A medium Cappuccino: on every fleet machine's menu (bench/fleet_seed.py).
    if not await run.request("scan", planned, "GET", f"/v1/pay?deviceUuid={device}&orderId={order}&drinkNo=2&size=2"):
        return
    csrf = {"Cookie": f"csrftoken={CSRF_TOKEN}", "X-CSRFToken": CSRF_TOKEN}
    payment = await run.request("payment", loop.time(), "POST", f"/v1/orders/{order}/payment", csrf)
    if not payment or "/confirm/" not in payment.location:
        return
    confirmed = loop.time()
    back = await run.confirm(payment.location)
    if back is None:
        run.confirmations.failed += 1
        return
    page = await run.request("status-page", loop.time(), "GET", back)
    if page and b'data-status="paid"' in page.body:
        run.confirmations.latencies.append(loop.time() - confirmed)
        return
    moment = loop.time() + FIRST_POLL
    for _poll in range(plan.customer_polls):
        await _sleep_until(moment)
        answer = await run.request("status-poll", moment, "GET", f"/v1/order-status/{order}")
        if answer and b'"status": "paid"' in answer.body:
            run.confirmations.latencies.append(loop.time() - confirmed)
            return
        moment = loop.time() + plan.customer_poll_interval
    run.confirmations.unconfirmed += 1


def schedule(plan: Plan, *, start: float) -> list[tuple[float, int, str, Any]]:
    """Every arrival of the run, (planned loop time, tiebreak, what, whom), in time order."""
    rng = random.Random(plan.seed)
    events: list[tuple[float, int, str, Any]] = []
    for what, clients, interval in (("machine", plan.machines, plan.machine_interval),
                                    ("status", plan.status_pages, plan.status_interval)):
        for client in clients:
            moment = rng.uniform(0, interval)
            while moment < plan.seconds:
                events.append((start + moment, len(events), what, client))
                moment += interval
    if plan.customers_per_s > 0:
        moment = rng.expovariate(plan.customers_per_s)
        while moment < plan.seconds:
            events.append((start + moment, len(events), "customer", rng.choice(plan.customer_devices)))
            moment += rng.expovariate(plan.customers_per_s)
    heapq.heapify(events)
    return [heapq.heappop(events) for _ in range(len(events))]


async def run_plan(url: str, plan: Plan, *, timeout: float = 5.0, max_in_flight: int = 1000,
                   connections: int = 256) -> dict[str, Any]:
    """Offer `plan` to the server at `url`; the figures per kind of request."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections, ttl_dns_cache=None)
    session_timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=session_timeout,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.2  # the schedule is built before the first send
        run = Run(url=url, timeout=timeout, max_in_flight=max_in_flight, session=session, start=start)
        events = schedule(plan, start=start)
        tasks: set[asyncio.Task[Any]] = set()
        wall = time.monotonic()
        customers = 0

        async def dispatch() -> None:
            nonlocal customers
            for moment, _, what, whom in events:
                await _sleep_until(moment)
                job: Awaitable[Any]
                if what == "machine":
                    job = run.request("machine-poll", moment, "GET", f"/v1/machine/orders/{whom.order}",
                                      {"Authorization": f"Bearer {whom.token}"})
                elif what == "status":
                    job = run.request("status-poll", moment, "GET", f"/v1/order-status/{whom}")
                else:
                    customers += 1
                    job = _customer(run, plan, number=customers, device=whom, planned=moment)
                task = asyncio.ensure_future(job)
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        cap = plan.seconds + 30 + (timeout + plan.customer_poll_interval) * (plan.customer_polls + 4)
        try:
            async with asyncio.timeout(cap):
                await dispatch()
                while tasks:
                    await asyncio.gather(*tasks)
            cut = False
        except TimeoutError:
            cut = True
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.monotonic() - wall
    figures = {"offered_per_s": {k: round(v, 1) for k, v in plan.offered().items()}, "elapsed_s": round(elapsed, 1),
               "cut_at_cap": cut, "kinds": {kind: tally.row(seconds=plan.seconds)
                                            for kind, tally in run.tallies.items() if tally.planned}}
    if plan.customers_per_s:
        figures["confirmation"] = run.confirmations.row()
    return figures


def run_plan_sync(url: str, plan: Plan, **options: Any) -> dict[str, Any]:
    """run_plan on a fresh event loop (uvloop's where installed: uvicorn[standard] brings it)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_plan(url, plan, **options))
