"""Overlapping requests keep to themselves: each request's sync code runs on a thread no other
request uses until it has ended (coffee_payment/asgi_handler.py, request_threads.py).

Real requests interleaved on one event loop, real threads, the test database; every test runs
against the project's handler and against Django's own ASGIHandler, whose semantics it keeps.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.core.signals import request_finished, request_started
from django.db import DatabaseError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from coffee_payment.asgi_handler import LeanASGIHandler
from coffee_payment.request_threads import RequestThread
from tests.coffee_payment.conftest import close_connections, idle_threads_run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

WAIT = 10  # seconds any step may take before the test fails


class Steps:
    """Named points the test and its views reach and wait for, on the event loop or in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.events: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.thread_events: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.arrivals: defaultdict[str, int] = defaultdict(int)

    def reach(self, name: str) -> None:
        self.events[name].set()
        self.thread_events[name].set()

    def reach_from_thread(self, name: str) -> None:
        self.thread_events[name].set()
        self.loop.call_soon_threadsafe(self.events[name].set)

    async def wait(self, name: str) -> None:
        await asyncio.wait_for(self.events[name].wait(), WAIT)

    def wait_in_thread(self, name: str) -> None:
        assert self.thread_events[name].wait(WAIT), f"{name} not reached within {WAIT} s"

    async def arrive(self, name: str, *, parties: int) -> None:
        """A barrier: returns once `parties` callers have arrived."""
        self.arrivals[name] += 1
        if self.arrivals[name] == parties:
            self.reach(name)
        await self.wait(name)


steps: Steps


# The views. Their paths are lean paths (settings.LEAN_PATHS has "/v1/").

local = threading.local()


def local_set(name: str) -> int:
    local.owner = name
    return threading.get_ident()


def local_get() -> tuple[str | None, int]:
    return getattr(local, "owner", None), threading.get_ident()


async def thread_local_view(request: HttpRequest) -> JsonResponse:
    name, after, until = request.GET["name"], request.GET.get("after"), request.GET.get("until")
    if after:
        await steps.wait(after)
    set_in = await sync_to_async(local_set)(name)
    steps.reach(f"{name}-set")
    if until:
        await steps.wait(until)
    owner, read_in = await sync_to_async(local_get)()
    return JsonResponse({"owner": owner, "threads": [set_in, read_in]})


def connection_opened_before() -> bool:
    """Whether this thread had an open connection when the request's first sync call began."""
    return connections["default"].connection is not None


def queries_logged() -> int:
    """The queries the thread's connection has logged since request_started's reset_queries."""
    return len(connections["default"].queries_log)


def log_a_query() -> int:
    connection = connections["default"]
    connection.force_debug_cursor = True  # log queries as DEBUG would
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return queries_logged()


async def first_call_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"logged": await sync_to_async(queries_logged)()})


async def no_sync_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({})


def connection_state() -> dict[str, int]:
    connection = connections["default"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"wrapper": id(connection), "raw": id(connection.connection), "thread": threading.get_ident()}


async def connection_view(request: HttpRequest) -> JsonResponse:
    name, until = request.GET["name"], request.GET.get("until")
    before = await sync_to_async(connection_state)()
    steps.reach(f"{name}-connected")
    if until:
        await steps.wait(until)
    return JsonResponse({"before": before, "after": await sync_to_async(connection_state)()})


def failed_query() -> bool:
    """A query that fails: Django marks the thread's connection (errors_occurred) for a check at
    the request's end."""
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")
    except DatabaseError:
        pass
    return connection.errors_occurred


async def failed_query_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"errors_occurred": await sync_to_async(failed_query)()})


def errors_occurred() -> bool:
    return connections["default"].errors_occurred


body_outcomes: list[tuple[str, Any]] = []
body_streams: list[Any] = []


@csrf_exempt
def sync_body_view(request: HttpRequest) -> HttpResponse:
    """Sync: Django runs it in the request's thread; a cancellation cannot stop it."""
    steps.reach_from_thread("view-started")
    steps.wait_in_thread("read-body")
    body_streams.append(request._stream)
    try:
        body_outcomes.append(("body", request.body))
    except Exception as exc:  # what the test is about: the body closed under the view
        body_outcomes.append(("error", repr(exc)))
    finally:
        steps.reach_from_thread("view-ended")
    return HttpResponse("read")


# Thread ownership, kept by the request signals' receivers and the views' sync calls.
owners: dict[int, str | None] = {}
used: defaultdict[str, set[int]] = defaultdict(set)
violations: list[str] = []
owners_lock = threading.Lock()


def request_id(scope: dict[str, Any]) -> str:
    return parse_qs(scope["query_string"].decode())["request"][0]


def on_started(*, scope: dict[str, Any], **kwargs: Any) -> None:
    thread, request = threading.get_ident(), request_id(scope)
    with owners_lock:
        if owners.get(thread) is not None:
            violations.append(f"request {request} started in a thread request {owners[thread]} holds")
        owners[thread] = request


def on_finished(**kwargs: Any) -> None:
    thread = threading.get_ident()
    with owners_lock:
        if owners.get(thread) is None:
            violations.append("request_finished in a thread no started request holds")
        owners[thread] = None


def touch(request: str) -> None:
    thread = threading.get_ident()
    with owners_lock:
        used[request].add(thread)
        if owners.get(thread) != request:
            violations.append(f"sync code of request {request} in a thread held by {owners.get(thread)}")


async def busy_view(request: HttpRequest) -> JsonResponse:
    rid, parties = request.GET["request"], int(request.GET["parties"])
    await sync_to_async(touch)(rid)
    # Every request holds its thread here, at the same time as all the others.
    await steps.arrive(request.GET["batch"], parties=parties)
    await sync_to_async(touch)(rid)
    await asyncio.sleep(0)
    await sync_to_async(touch)(rid)
    return JsonResponse({})


urlpatterns = [
    path("v1/isolation/local", thread_local_view),
    path("v1/isolation/connection", connection_view),
    path("v1/isolation/body", sync_body_view),
    path("v1/isolation/busy", busy_view),
    path("v1/isolation/first-call", first_call_view),
    path("v1/isolation/no-sync", no_sync_view),
    path("v1/isolation/failed-query", failed_query_view),
]


class IsolationRequest(ASGIRequest):
    urlconf = __name__


@pytest.fixture(params=[LeanASGIHandler, ASGIHandler], ids=["project", "django"])
def app(request: pytest.FixtureRequest) -> Iterator[ASGIHandler]:
    handler = type(request.param.__name__, (request.param,), {"request_class": IsolationRequest})()
    yield handler
    if isinstance(handler, LeanASGIHandler):
        close_connections(handler)


@pytest.fixture(autouse=True)
async def interleaving() -> None:
    global steps
    steps = Steps()
    body_outcomes.clear()
    body_streams.clear()
    owners.clear()
    used.clear()
    violations.clear()


def http_scope(method: str, url: str) -> dict[str, Any]:
    url_path, _, query = url.partition("?")
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": url_path, "raw_path": url_path.encode(), "query_string": query.encode(), "root_path": "",
        "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }


def send_request(app: ASGIHandler, url: str, *, method: str = "GET", body: bytes = b"") -> ApplicationCommunicator:
    communicator = ApplicationCommunicator(app, http_scope(method, url))
    communicator.input_queue.put_nowait({"type": "http.request", "body": body})
    assert not communicator.future.done()  # the application starts now, not at the first receive
    return communicator


async def response(communicator: ApplicationCommunicator) -> tuple[int, Any]:
    """The status and JSON body, once the application has returned (request_finished included)."""
    start = await communicator.receive_output(WAIT)
    content = b""
    while True:
        message = await communicator.receive_output(WAIT)
        content += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(WAIT)
    return start["status"], json.loads(content or b"null")


async def test_a_thread_local_set_by_one_request_is_not_read_by_an_overlapping_one(app: ASGIHandler) -> None:
    """A sets a thread-local, B sets the same one while A is between two sync calls, A reads it."""
    a = send_request(app, "/v1/isolation/local?name=a&until=b-done")
    b = send_request(app, "/v1/isolation/local?name=b&after=a-set")
    b_status, b_seen = await response(b)
    steps.reach("b-done")
    a_status, a_seen = await response(a)
    assert (a_status, b_status) == (200, 200)
    assert (a_seen["owner"], b_seen["owner"]) == ("a", "b")
    # Each request's sync calls in one thread, the two requests in two.
    assert len(set(a_seen["threads"])) == 1 and len(set(b_seen["threads"])) == 1
    assert a_seen["threads"][0] != b_seen["threads"][0]


async def test_a_requests_database_connection_is_not_closed_when_an_overlapping_one_ends(app: ASGIHandler) -> None:
    """B starts and ends while A holds a connection; B's request_finished (CONN_MAX_AGE = 0: close
    the connection) acts on B's thread's connection, and A goes on with its own."""
    finished_with: list[int] = []

    def record(**kwargs: Any) -> None:
        finished_with.append(id(connections["default"]))

    request_finished.connect(record)
    try:
        a = send_request(app, "/v1/isolation/connection?name=a&until=b-ended")
        await steps.wait("a-connected")
        assert (await response(send_request(app, "/v1/isolation/connection?name=b")))[0] == 200
        b_finished_with = list(finished_with)
        steps.reach("b-ended")
        status, a_seen = await response(a)
    finally:
        request_finished.disconnect(record)
    assert status == 200
    assert len(b_finished_with) == 1 and b_finished_with[0] != a_seen["before"]["wrapper"]
    # The same connection, open all along (on PostgreSQL a closed one would have been replaced).
    assert a_seen["after"] == a_seen["before"]


async def test_a_cancelled_sync_view_still_reads_its_body(app: ASGIHandler) -> None:
    """The client goes away while a sync view runs (the request timeout does the same): the view
    runs on, and the request's body stays open until it has read it; another request meanwhile."""
    payload = b'{"order": "x"}' * 100
    cancelled = send_request(app, "/v1/isolation/body", method="POST", body=payload)
    await steps.wait("view-started")
    await cancelled.send_input({"type": "http.disconnect"})
    # The handler sees the disconnect and cancels the request while an overlapping one is served.
    assert (await response(send_request(app, "/v1/isolation/local?name=other")))[0] == 200
    steps.reach("read-body")
    await cancelled.wait(WAIT)
    await steps.wait("view-ended")
    assert body_outcomes == [("body", payload)]
    assert cancelled.output_queue.empty()  # cancelled: no response sent
    if isinstance(app, LeanASGIHandler):
        # Django's handler leaves the body of a cancelled request to the garbage collector; the
        # project's closes it once the view is done.
        idle_threads_run(app, threading.get_ident)
        assert body_streams[0].closed


async def test_with_only_djangos_receivers_overlapping_requests_keep_their_connections(app: ASGIHandler) -> None:
    """As above, with no receiver of the test's own: the request signals' receivers are Django's,
    which the project's handler runs in the request's thread with its first sync call (start) and
    in its own thread switch after the response (finish)."""
    a = send_request(app, "/v1/isolation/connection?name=a&until=b-ended")
    await steps.wait("a-connected")
    assert (await response(send_request(app, "/v1/isolation/connection?name=b")))[0] == 200
    steps.reach("b-ended")
    status, a_seen = await response(a)
    assert status == 200
    assert a_seen["after"] == a_seen["before"]
    in_memory = getattr(connections["default"], "is_in_memory_db", lambda: False)()
    if isinstance(app, LeanASGIHandler) and not in_memory:
        # request_finished closed each request's connection in its thread (CONN_MAX_AGE = 0).
        # (Django never closes an in-memory SQLite database: the PostgreSQL pass checks this.)
        open_in_threads = [done.result(WAIT) for done in idle_threads_run(app, connection_opened_before)]
        assert len(open_in_threads) == 2 and not any(open_in_threads)


async def test_request_started_runs_in_the_requests_thread_before_its_first_sync_call(lean: LeanASGIHandler) -> None:
    """A pooled thread left with a logged query: request_started's reset_queries, run in that
    thread with the next request's first sync call, clears the log before the call begins."""
    handler = type("Handler", (LeanASGIHandler,), {"request_class": IsolationRequest})()
    try:
        assert (await response(send_request(handler, "/v1/isolation/first-call")))[0] == 200
        [logged] = idle_threads_run(handler, log_a_query)
        assert logged.result(WAIT) == 1  # the pool's one thread now holds a logged query
        status, seen = await response(send_request(handler, "/v1/isolation/first-call"))
        assert (status, seen) == (200, {"logged": 0})
    finally:
        close_connections(handler)


async def test_a_request_that_runs_no_sync_code_takes_no_thread(lean: LeanASGIHandler) -> None:
    """No thread switch at all for an async view without sync calls, while the request signals'
    receivers are Django's own; with another receiver connected, Django's dispatch (in a thread)."""
    handler = type("Handler", (LeanASGIHandler,), {"request_class": IsolationRequest})()
    started: list[int] = []

    def on_start(**kwargs: Any) -> None:
        started.append(threading.get_ident())

    try:
        for _ in range(3):
            assert (await response(send_request(handler, "/v1/isolation/no-sync")))[0] == 200
        assert handler.threads.checked_out == 0
        request_started.connect(on_start)
        try:
            assert (await response(send_request(handler, "/v1/isolation/no-sync")))[0] == 200
        finally:
            request_started.disconnect(on_start)
        assert handler.threads.checked_out == 1 and started[0] != threading.get_ident()
    finally:
        close_connections(handler)


async def test_request_finished_takes_the_thread_only_when_it_has_work_there(lean: LeanASGIHandler) -> None:
    """With Django's receivers only: a request whose connection close_old_connections would keep
    (SQLite: CONN_MAX_AGE > 0) closes its response without another thread switch; one whose
    connection it would close (PostgreSQL's pool: CONN_MAX_AGE = 0) or check (after an error)
    gets request_finished in its thread, which resets the error mark there."""
    handler = type("Handler", (LeanASGIHandler,), {"request_class": IsolationRequest})()
    jobs: list[str] = []

    class CountingThread(RequestThread):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            jobs.append(getattr(fn, "__qualname__", repr(fn)))
            return super().submit(fn, *args, **kwargs)

    handler.threads.request_executor = lambda: CountingThread(handler.threads)  # type: ignore[method-assign]
    kept = connections["default"].settings_dict["CONN_MAX_AGE"] > 0
    try:
        assert (await response(send_request(handler, "/v1/isolation/connection?name=a")))[0] == 200
        assert len(jobs) == (2 if kept else 3)  # two reads, then request_finished unless kept
        jobs.clear()
        status, seen = await response(send_request(handler, "/v1/isolation/failed-query"))
        assert (status, seen) == (200, {"errors_occurred": True})
        assert len(jobs) == 2  # the failed query, then request_finished in the thread
        assert not any(done.result(WAIT) for done in idle_threads_run(handler, errors_occurred))
    finally:
        close_connections(handler)


@pytest.mark.parametrize("parties", [12])
async def test_one_request_per_thread_at_a_time(app: ASGIHandler, parties: int) -> None:
    """`parties` requests all in flight at once: each holds one thread of its own from
    request_started to request_finished, its sync calls all in it; a second batch reuses the
    project's pooled threads."""
    request_started.connect(on_started)
    request_finished.connect(on_finished)
    try:
        for batch in ("first", "second"):
            urls = [f"/v1/isolation/busy?request={batch}-{n}&batch={batch}&parties={parties}" for n in range(parties)]
            answers = await asyncio.gather(*(response(send_request(app, url)) for url in urls))
            assert [status for status, _ in answers] == [200] * parties
            if isinstance(app, LeanASGIHandler):
                assert idle_threads_run(app, threading.get_ident)  # every thread handed back
    finally:
        request_started.disconnect(on_started)
        request_finished.disconnect(on_finished)
    assert violations == []
    assert all(len(threads) == 1 for threads in used.values()) and len(used) == 2 * parties
    first = {thread for request, threads in used.items() if request.startswith("first") for thread in threads}
    second = {thread for request, threads in used.items() if request.startswith("second") for thread in threads}
    assert len(first) == len(second) == parties
    if isinstance(app, LeanASGIHandler):
        assert second <= first
