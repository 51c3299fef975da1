"""What a forged notification can cost: who may send one, and how many provider reads they make.

A notification's body is never trusted: the payment (or refund) it names is read from the provider
under the shop's credentials. Bounded per worker process (docs/payments.md, "The provider"):

* one read in flight per payment or refund id; notifications arriving meanwhile share its answer
  when it says what they claim (`payment.succeeded`: succeeded);
* after a read made for a claim, the same claim for that id within PAYMENT_PROVIDER_REREAD_SECONDS
  is answered from it when it agreed (or the provider knew no such id), else answered 429: the
  provider sends it again later, and it is read then. A claim is a status or "other", so an id
  costs at most one read per claim and period;
* ids no order holds (an order found only by a payment's metadata, a refund its order did not
  ask for): at most PAYMENT_PROVIDER_UNKNOWN_READS_PER_MINUTE reads a minute, then 429.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from payments.errors import NotificationDeferred
from payments.metrics import NOTIFICATIONS_DEFERRED

__all__ = ["NOTIFICATION_READS", "NotificationReads", "notification_sender_allowed"]

# Reads remembered at most (ids of orders, plus what the unknown-id cap lets in); older entries
# than the re-read period are dropped when there are more.
_REMEMBERED = 4096
_MINUTE = 60.0


@functools.lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(entry) for entry in entries)


def notification_sender_allowed(address: str | None) -> bool:
    """Whether a notification may come from `address` (REMOTE_ADDR): any, unless
    PAYMENT_PROVIDER_NOTIFICATION_ADDRESSES lists the provider's published ones."""
    entries = tuple(settings.PAYMENT_PROVIDER_NOTIFICATION_ADDRESSES)
    if not entries:
        return True
    try:
        peer = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(peer in network for network in _networks(entries))


@dataclass(frozen=True)
class _Read:
    at: float
    result: Any  # the provider's object, or None when it knows no such id


def _claim(event: str, statuses: Collection[str]) -> str:
    status = event.partition(".")[2]
    return status if status in statuses else "other"


def _agrees(result: Any, claim: str) -> bool:
    return result is None or result.status == claim


class NotificationReads:
    """One worker's reads for notifications: in flight, recent, and of unknown ids."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Task[Any]] = {}
        self._recent: dict[tuple[str, str], _Read] = {}
        self._unknown: deque[float] = deque()

    def clear(self) -> None:
        """Forget every read (tests: each starts as a fresh worker)."""
        self.__init__()  # type: ignore[misc]

    async def read(self, *, key: str, event: str, statuses: Collection[str], known: bool,
                   read: Callable[[], Awaitable[Any]]) -> Any:
        """The provider's object (or None) for a notification of `event` about `key`
        ("payment:<id>"), read with `read` unless a read in flight or a recent one answers it;
        NotificationDeferred (429) when it cannot be read now."""
        claim = _claim(event, statuses)
        while True:
            flight = self._flights.get(key)
            if flight is not None and not flight.done():
                result = await asyncio.shield(flight)
                if _agrees(result, claim):
                    return result
                continue  # read again for this claim, unless it was meanwhile
            recent = self._recent.get((key, claim))
            now = time.monotonic()
            if recent is not None and now - recent.at < settings.PAYMENT_PROVIDER_REREAD_SECONDS:
                if _agrees(recent.result, claim):
                    return recent.result
                NOTIFICATIONS_DEFERRED.labels("reread").inc()
                raise NotificationDeferred(retry_after=settings.PAYMENT_PROVIDER_REREAD_SECONDS - (now - recent.at))
            if not known:
                self._count_unknown(now)
            task = asyncio.get_running_loop().create_task(read())
            # On the task, not the request: a request cancelled meanwhile leaves the answer to the others.
            task.add_done_callback(functools.partial(self._finish, key, claim))
            self._flights[key] = task
            return await asyncio.shield(task)

    def _count_unknown(self, now: float) -> None:
        window = self._unknown
        while window and now - window[0] >= _MINUTE:
            window.popleft()
        if len(window) >= settings.PAYMENT_PROVIDER_UNKNOWN_READS_PER_MINUTE:
            NOTIFICATIONS_DEFERRED.labels("unknown_ids").inc()
            raise NotificationDeferred(retry_after=_MINUTE - (now - window[0]))
        window.append(now)

    def _finish(self, key: str, claim: str, task: asyncio.Task[Any]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        # A failed read is not remembered: the provider's re-sent notification reads again.
        if task.cancelled() or task.exception() is not None:
            return
        now = time.monotonic()
        self._recent[(key, claim)] = _Read(at=now, result=task.result())
        if len(self._recent) > _REMEMBERED:
            period = settings.PAYMENT_PROVIDER_REREAD_SECONDS
            self._recent = {k: read for k, read in self._recent.items() if now - read.at < period}


# This worker's reads (each Gunicorn worker has its own: the bounds are per worker).
NOTIFICATION_READS = NotificationReads()
