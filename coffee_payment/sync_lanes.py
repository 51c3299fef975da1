"""Long-lived threads for the sync code of lean requests (ORM calls, services), each request on one lane.

Under ASGI Django runs a request's sync code in a thread of that request's own: asgiref's
ThreadSensitiveContext creates a one-thread executor on the request's first `sync_to_async` call
and, when the request ends, starts a second thread to join the first. Two thread starts per
request cost more than the primary-key read they carry (PROJECT.md, Performance).

A lane is a one-thread executor that lives as long as the worker process. At its first sync call a
lean request takes the lane with the shortest queue and keeps it to the end, so all of its sync
calls run in one thread, in order, as Django's thread-sensitive mode promises. Requests sharing a
lane run their sync calls one after the other; a call stuck in a lane (a slow query, a lock wait)
holds up only what is queued behind it, and the next requests go to the other lanes.

Database connections are per thread, so a lane's connection is shared by the requests on it, one
call at a time. Django's request signals run in the lane as they would in a request's own thread:
`request_started` right before the request's first sync call, `request_finished` (which closes
the connection, or returns it to the pool, as CONN_MAX_AGE = 0 asks) as a job queued after its
last. A request that ran no sync code holds nothing in any thread and sends neither.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from django.core import signals

__all__ = ["RequestLane", "SyncLanes"]

logger = logging.getLogger(__name__)


class _Lane:
    __slots__ = ("completed", "executor", "submitted")

    def __init__(self, name: str) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        # Each counter has one writer (`submitted` the worker's event loop, `completed` the lane's
        # thread), so no lock is needed to read the queue length.
        self.submitted = 0
        self.completed = 0

    @property
    def queued(self) -> int:
        """Calls waiting or running in this lane."""
        return self.submitted - self.completed

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return self.executor.submit(self._run, fn, args, kwargs)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            self.completed += 1


class SyncLanes:
    """`count` lanes per process, created on first use: never in a Gunicorn master that preloads."""

    def __init__(self, *, count: int, sender: type) -> None:
        if count < 1:
            raise ValueError(f"count={count!r} is not a number of lanes (allowed: >= 1)")
        self.count = count
        # The handler class named as the signals' sender, as Django's own handler does.
        self.sender = sender
        self._lanes: list[_Lane] = []
        self._pid = 0
        self._lock = threading.Lock()

    def _current(self) -> list[_Lane]:
        # A forked child inherits the list but not the threads: start its own.
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._lanes = [_Lane(f"sync-lane-{n}") for n in range(self.count)]
                    self._pid = os.getpid()
        return self._lanes

    def acquire(self, *, scope: dict[str, Any]) -> RequestLane:
        """One request's executor; it takes a lane at the request's first sync call. `release()` it."""
        return RequestLane(self, sender=self.sender, scope=scope)

    def shortest(self) -> _Lane:
        return min(self._current(), key=lambda lane: lane.queued)

    def run(self, fn: Callable[[], Any]) -> list[Future[Any]]:
        """Queue `fn` on every lane (tests: what every lane's thread sees once its queue is done)."""
        return [lane.submit(fn) for lane in self._current()]


class RequestLane(Executor):
    """One request's view of the lanes: the executor asgiref's ThreadSensitiveContext is given."""

    def __init__(self, lanes: SyncLanes, *, sender: type, scope: dict[str, Any]) -> None:
        self._lanes = lanes
        self._lane: _Lane | None = None
        self._sender = sender
        self._scope = scope
        self._released = False

    @property
    def used(self) -> bool:
        """Whether the request has run sync code."""
        return self._lane is not None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:  # type: ignore[override]
        if self._released:
            raise RuntimeError("the request has ended; its lane takes no more work")
        if self._lane is None:
            self._lane = self._lanes.shortest()
            # In the same job: the signal costs no extra thread switch.
            return self._lane.submit(self._first_call, fn, args, kwargs)
        return self._lane.submit(fn, *args, **kwargs)

    def _first_call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        signals.request_started.send(sender=self._sender, scope=self._scope)
        return fn(*args, **kwargs)

    def release(self, *, finish: Callable[[], Any] | None) -> None:
        """The request has ended: queue `finish` (by default request_finished) after its sync calls.

        Not waited for: the response is out already. Nothing is queued for a request that ran no
        sync code.
        """
        if self._released:
            return
        self._released = True
        if self._lane is not None:
            self._lane.submit(self._finish, finish or self._request_finished)

    def _request_finished(self) -> None:
        signals.request_finished.send(sender=self._sender)

    @staticmethod
    def _finish(finish: Callable[[], Any]) -> None:
        try:
            finish()
        except Exception:  # nobody awaits this job: say what failed rather than drop it
            logger.exception("finishing a request failed in %s", threading.current_thread().name)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # The lane outlives the request; asgiref does not shut down an executor it was given.
        pass
