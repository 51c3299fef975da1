"""Long-lived threads for requests' sync code: a request checks one out at its first sync call,
and no other request runs in it until that request and everything it ran there have ended.

asgiref's ThreadSensitiveContext would start a thread per request and another to join it; these
threads outlive requests instead. A thread returns to the pool once the request's last job has
finished, a cancelled sync view still running included, so a thread-local (a database connection)
belongs to one request at a time and `request_finished` closes that request's connection only.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

__all__ = ["RequestThread", "SyncThreads"]

THREAD_NAME_PREFIX = "sync-thread"
# Idle threads a worker keeps; a thread checked in beyond them ends. Busy threads are not counted,
# so a worker under steady load keeps as many as it has requests in flight and starts none. An
# idle thread costs its stack's touched pages.
IDLE_MAX = 64


class SyncThreads:
    """A worker's pool of one-thread executors, filled on first use: never in a preloading master."""

    def __init__(self, *, idle_max: int = IDLE_MAX) -> None:
        if idle_max < 0:
            raise ValueError(f"idle_max={idle_max!r} is not a number of threads (allowed: >= 0)")
        self.idle_max = idle_max
        # Appended to on the loop or in the pool's threads, popped on the loop: deque's ends are thread-safe.
        self._idle: deque[ThreadPoolExecutor] = deque()
        # `checked_out` has one writer, the event loop; `checked_in` is written on the loop or in
        # the pool's threads, under the lock.
        self.checked_out = 0
        self.checked_in = 0
        self._check_in_lock = threading.Lock()
        self._pid = os.getpid()

    def request_executor(self) -> RequestThread:
        """One request's executor, for asgiref's ThreadSensitiveContext; `release()` it at the end."""
        return RequestThread(self)

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def busy(self) -> int:
        """Threads checked out to requests, or still running what a request left behind."""
        return self.checked_out - self.checked_in

    def check_out(self) -> ThreadPoolExecutor:
        """On the event loop, at a request's first sync call."""
        if self._pid != os.getpid():
            # A forked child inherits the executors but not their threads.
            self._idle.clear()
            self.checked_out = self.checked_in = 0
            self._pid = os.getpid()
        self.checked_out += 1
        try:
            return self._idle.pop()  # the most recently used: its thread is the likeliest to be warm
        except IndexError:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME_PREFIX)

    def check_in(self, executor: ThreadPoolExecutor) -> None:
        """Once the request that had `executor` has no job left in it (on the loop or in its thread)."""
        with self._check_in_lock:
            self.checked_in += 1
            keep = len(self._idle) < self.idle_max
            if keep:
                self._idle.append(executor)
        if not keep:
            executor.shutdown(wait=False)  # the thread ends once this job returns

    def run_idle(self, fn: Callable[[], Any]) -> list[Future[Any]]:
        """Run `fn` in every idle thread (tests: what each thread holds between requests)."""
        return [executor.submit(fn) for executor in tuple(self._idle)]


class RequestThread(Executor):
    """One request's thread: checked out at its first sync call, checked in after its last."""

    def __init__(self, pool: SyncThreads) -> None:
        self._pool = pool
        self._executor: ThreadPoolExecutor | None = None
        self._last: Future[Any] | None = None
        self._released = False
        self._before: Callable[[], Any] | None = None
        self._at_end: list[Callable[[], Any]] = []
        self._check: Callable[[], bool] | None = None
        self._checked = False

    def before_first_job(self, fn: Callable[..., Any], /, **kwargs: Any) -> None:
        """Run `fn(**kwargs)` in the thread before the request's first job, in the same switch.

        Not run if the request never runs sync code. An exception from it is the first job's.
        """
        assert self._executor is None, "the request already has a thread"
        self._before = functools.partial(fn, **kwargs)

    def check_after_jobs(self, check: Callable[[], bool]) -> None:
        """Run `check()` in the thread after each job; `settled` tells what the last one said."""
        self._check = check

    @property
    def settled(self) -> bool:
        """Whether the request has no thread, or its jobs are done and `check()` was true after
        the last. Read on the loop: the job's future completes after its check has run."""
        if self._executor is None:
            return True
        last = self._last
        return last is not None and last.done() and not last.cancelled() and self._checked

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:  # type: ignore[override]
        if self._released:
            raise RuntimeError("the request has ended; its thread takes no more work")
        before = None
        if self._executor is None:
            self._executor = self._pool.check_out()
            before, self._before = self._before, None
        self._last = self._executor.submit(self._job, before, fn, args, kwargs)
        return self._last

    def _job(self, before: Callable[[], Any] | None, fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
        self._checked = False
        try:
            if before is not None:
                before()
            return fn(*args, **kwargs)
        finally:
            self._checked = self._check is not None and self._check()

    def at_end(self, fn: Callable[[], Any]) -> None:
        """Call `fn()` once the request has ended and nothing it ran is still running (`release()`)."""
        self._at_end.append(fn)

    def release(self) -> None:
        """The request has ended: the `at_end` calls run and the thread goes back to the pool once
        the jobs the request queued are done.

        Not waited for. A request that ran no sync code holds no thread.
        """
        if self._released:
            return
        self._released = True
        executor = self._executor
        # One thread, first in first out: once the last job has run, every earlier one has run or
        # was cancelled before it started. A job cancelled before it started says nothing.
        if executor is None or (self._last is not None and self._last.done() and not self._last.cancelled()):
            # The usual case (Django's handler awaits its last sync call): no job, no thread switch.
            self._end(executor)
        else:
            # A sync call the request stopped waiting for (cancelled): after it, in its thread.
            executor.submit(self._end, executor)

    def _end(self, executor: ThreadPoolExecutor | None) -> None:
        try:
            for fn in self._at_end:
                fn()
        finally:
            if executor is not None:
                self._pool.check_in(executor)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # The thread outlives the request; asgiref does not shut down an executor it was given.
        pass
