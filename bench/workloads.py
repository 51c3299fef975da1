"""The bench's workloads: what wrk sends to a running server, and the rows it reports.

- `health`: GET /health as fast as the server answers;
- `status`: GET /v1/order-status/<id> over the seeded orders, as fast as the server answers;
- `payment`: POST /v1/orders/<id>/payment with `payment_connections` requests in flight, each for a
  different seeded order (a customer pressing Pay once; past the last order the ids wrap around,
  which is a customer pressing Pay again: the same Idempotence-Key, the same provider call), against
  the fake provider answering after `provider_latency` seconds; meanwhile a second wrk polls
  /v1/order-status/<id> at a steady `poll_rate`, and its latency is the `payment-poll` row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench import wrk
from bench.seed import PAYMENT_PREFIX, STATUS_PREFIX

# Connections of the paced poller: each waits 1000 * POLL_CONNECTIONS / poll_rate ms between polls.
POLL_CONNECTIONS = 10


@dataclass(frozen=True)
class Options:
    connections: int
    seconds: int
    payment_connections: int
    poll_rate: int
    status_orders: int
    payment_orders: int


def _orders(*, method: str, path_format: str, prefix: str, count: int, delay_ms: int = 0) -> wrk.Script:
    """bench/lua/orders.lua over the seeded orders `prefix`000001.. `prefix`<count>."""
    return wrk.Script("orders.lua", (method, path_format, prefix, str(count), str(delay_ms)))


def health(url: str, options: Options) -> dict[str, wrk.Result]:
    load = wrk.Load(connections=options.connections, seconds=options.seconds)
    return {"health": wrk.run(url + "/health", load=load)}


def status(url: str, options: Options) -> dict[str, wrk.Result]:
    load = wrk.Load(connections=options.connections, seconds=options.seconds)
    script = _orders(method="GET", path_format="/v1/order-status/%s", prefix=STATUS_PREFIX,
                     count=options.status_orders)
    return {"status": wrk.run(url, load=load, script=script)}


def payment(url: str, options: Options) -> dict[str, wrk.Result]:
    create = wrk.Load(connections=options.payment_connections, seconds=options.seconds)
    pay = _orders(method="POST", path_format="/v1/orders/%s/payment", prefix=PAYMENT_PREFIX,
                  count=options.payment_orders)
    poll = wrk.Load(connections=POLL_CONNECTIONS, seconds=options.seconds)
    polls = _orders(method="GET", path_format="/v1/order-status/%s", prefix=STATUS_PREFIX,
                    count=options.status_orders, delay_ms=1000 * POLL_CONNECTIONS // options.poll_rate)
    created, polled = wrk.run_together([(url, create, pay), (url, poll, polls)])
    return {"payment": created, "payment-poll": polled}


WORKLOADS: dict[str, Callable[[str, Options], dict[str, wrk.Result]]] = {
    "health": health,
    "status": status,
    "payment": payment,
}
