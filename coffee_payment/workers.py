"""Gunicorn worker for the ASGI service that drains instead of dropping work.

Stock `uvicorn_worker.UvicornWorker` (0.4) loses requests on a stop or a recycle; this subclass of
uvicorn's `Server` fixes each way:

* the master's SIGQUIT (its own SIGINT) only flips a flag nothing reads, so the worker accepts
  until SIGKILL: https://github.com/Kludex/uvicorn-worker/issues/2,
  https://github.com/Kludex/uvicorn/issues/1116, https://github.com/benoitc/gunicorn/issues/2604
* `Server.shutdown()` closes connections accepted but not yet read, and idle keep-alive ones
  being reused: https://github.com/Kludex/uvicorn/issues/2757,
  https://github.com/Kludex/uvicorn/pull/3124, https://github.com/benoitc/gunicorn/issues/2567
* after uvicorn's main loop nobody beats the heartbeat, and its graceful timeout is not
  Gunicorn's: https://github.com/Kludex/uvicorn/pull/2094

The drain deadline is Gunicorn's `graceful_timeout` less KILL_MARGIN (config/gunicorn.py adds it),
so the worker cancels and logs what is left before the master's SIGKILL. Relies on uvicorn and
uvicorn-worker internals; tests/coffee_payment/test_workers.py and tests/integration fail when an
upgrade changes them.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import mmap
import signal
import socket
import sys
import time
from types import FrameType
from typing import Any

from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]
from uvicorn.config import Config
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]

from coffee_payment.asgi_types import ASGIApp, Message, Receive, Scope, Send
from coffee_payment.conf import process_settings
# Time for the cancelled requests' answers (_CANCEL_GRACE), closing and exiting.
from coffee_payment.conf_values import KILL_MARGIN
from coffee_payment.http_protocol import LimitedHttpToolsProtocol
from coffee_payment.listeners import Listener, file_limit_raise
from coffee_payment.metrics import DRAIN_CANCELLED, DRAINS

__all__ = ["KILL_MARGIN", "DrainingServer", "DrainingUvicornWorker", "master_signals_record"]

logger = logging.getLogger("uvicorn.error")

# How often the drain loop re-checks connections. Short enough that "exit once
# the last response is out" is prompt; long enough to cost nothing.
_DRAIN_TICK = 0.05
# After cancelling overdue requests, how long their tasks get to send uvicorn's
# 500 before the connections are closed under them.
_CANCEL_GRACE = 0.5
_MISSING = object()
# The liveness probe's request target (deploy/kubernetes/base/deployment.yaml).
LIVENESS_PATHS = frozenset({b"/health"})


# The signal that stopped the master, in memory it shares with every worker it forks (an anonymous
# shared mapping made at import, in the master): Gunicorn stops its workers with SIGQUIT for its own
# SIGINT as for SIGQUIT, and a worker's drain names what the master really received.
_MASTER_SIGNAL = mmap.mmap(-1, 1)


def master_signals_record(arbiter: Arbiter) -> None:
    """Note the master's SIGINT or SIGQUIT before Gunicorn's handler sends the workers SIGQUIT
    (config/gunicorn.py's when_ready: the arbiter looks its handlers up by name on each signal)."""
    for sig in (signal.SIGINT, signal.SIGQUIT):
        name = f"handle_{sig.name[3:].lower()}"

        def noted(handler: Any = getattr(arbiter, name), sig: signal.Signals = sig) -> None:
            _MASTER_SIGNAL[0] = sig
            handler()

        setattr(arbiter, name, noted)


def _signal_reason(sig: int) -> str:
    master = _MASTER_SIGNAL[0]
    if sig == signal.SIGQUIT and master:
        return f"the master received {signal.Signals(master).name}"
    return f"received {signal.Signals(sig).name}"


class DrainingServer(Server):
    """uvicorn `Server` whose shutdown finishes every accepted request.

    Drain rules (applied from the first signal or the `max_requests` limit):

    * listeners are closed at once (from the signal handler, via the loop);
    * every response that *starts* after that carries `Connection: close`,
      so keep-alive clients learn in-band that the connection is going away;
    * a response that already started with keep-alive is left alone: closing
      the socket after it would race the client's next request;
    * a connection with no request in progress (fresh, or idle keep-alive) is
      closed only by uvicorn's own keep-alive timer, i.e. after
      `timeout_keep_alive` seconds without a byte from the client. Any byte
      cancels that timer in `data_received`, so a request the client is
      sending is never cut;
    * the whole drain is bounded by `drain_timeout`; what is still running
      then is cancelled (uvicorn answers 500 if nothing was sent yet) and its
      connection closed, before the master's SIGKILL would lose it silently.
    """

    def __init__(self, config: Config, *, drain_timeout: float) -> None:
        super().__init__(config)
        self.drain_timeout = drain_timeout
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listen_sockets: list[socket.socket] = []
        self._listeners: list[Listener] = []
        self._drain_started = 0.0
        self._drain_reason = ""
        # The drains counter's label: signal, max_requests (a recycle) or exit.
        self._drain_kind = ""
        self._sigint_count = 0
        # Connections of a protocol we do not know how to drain politely; they
        # get uvicorn's own `shutdown()` once.
        self._shut_down: set[object] = set()

    # --- signals ---------------------------------------------------------

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Start a graceful drain for SIGINT, SIGTERM and SIGQUIT alike.

        Runs in signal context, so it only sets flags and schedules the drain
        on the loop (logging here could re-enter a logging handler's lock).
        """
        if sig == signal.SIGINT:
            self._sigint_count += 1
            # Keep uvicorn's "second Ctrl+C forces quit", counting SIGINT only:
            # Ctrl+C on a terminal delivers SIGINT *and* the master's SIGQUIT to
            # each worker, and that pair must stay graceful.
            self.force_exit = self.force_exit or self._sigint_count > 1
        # Deliberately not appended to `_captured_signals`: uvicorn would
        # re-raise it after serve() with the SIG_DFL disposition UvicornWorker
        # installed, killing the worker by signal before gunicorn's
        # `worker_exit` hook and "Worker exiting" log run (and SIGQUIT's
        # default action dumps core). The drain *is* the signal's effect.
        self.should_exit = True
        reason = _signal_reason(sig)
        if self._loop is None:
            self._drain_reason = self._drain_reason or reason
            self._drain_kind = self._drain_kind or "signal"
        else:
            # A context of its own: the signal may interrupt a request's task, whose context (its
            # X-Request-ID) would otherwise be copied into the drain's log lines.
            self._loop.call_soon_threadsafe(self._begin_drain, reason, "signal", context=contextvars.Context())

    # --- startup ---------------------------------------------------------

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._listen_sockets = list(sockets or [])
        # Wrap before the listeners exist, so no connection can get a protocol
        # built with the unwrapped app (protocols read config.loaded_app).
        self.config.loaded_app = self._close_when_draining(self.config.loaded_app)
        if sockets is None:  # uvicorn binding its own socket (not under Gunicorn)
            await super().startup(sockets=sockets)
            return
        # Gunicorn's sockets are accepted by Listeners, not by uvloop's servers: running out of
        # file descriptors is then logged and counted (coffee_payment/listeners.py). uvicorn's
        # startup runs its lifespan and marks the server started, with no server of its own.
        await super().startup(sockets=[])
        if self.started and not self.should_exit:
            config = self.config

            def create_protocol() -> asyncio.Protocol:
                return config.http_protocol_class(  # type: ignore[call-arg]
                    config=config, server_state=self.server_state, app_state=self.lifespan.state,
                )

            self._listeners = [Listener(sock, protocol_factory=create_protocol, ssl=config.ssl) for sock in sockets]

    def _close_when_draining(self, app: ASGIApp) -> ASGIApp:
        """Add `Connection: close` to responses that start during the drain.

        Done at the ASGI layer because both h11 and httptools honour an
        app-supplied `connection: close` (and then close after the body),
        which avoids touching protocol internals.
        """

        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return

            async def send_closing(message: Message) -> None:
                if self.draining and message["type"] == "http.response.start":
                    # Replace, not add: "keep-alive" next to "close" is contradictory.
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
                await send(message)

            await app(scope, receive, send_closing)

        return wrapped

    # --- drain -----------------------------------------------------------

    def _begin_drain(self, reason: str, kind: str) -> None:
        if self.draining:
            if self.force_exit:
                logger.warning("%s while draining: forcing exit, in-flight requests are dropped", reason)
            else:
                logger.info("%s while draining: drain continues", reason)
            return
        self._drain_reason = self._drain_reason or reason
        self._drain_kind = self._drain_kind or kind
        if not self.started:
            # Listeners do not exist yet; uvicorn's _serve skips main_loop on
            # should_exit and shutdown() comes back here once started.
            return
        self.draining = True
        self.should_exit = True
        self._drain_started = time.monotonic()
        DRAINS.labels(self._drain_kind).inc()
        # Stop accepting now rather than on the next 100 ms tick of main_loop.
        # On a stop signal the master has already closed its copy, so once every
        # worker has, new connections are refused; on a recycle the master keeps
        # it and new connections queue for the siblings / the replacement.
        for server in getattr(self, "servers", []):
            server.close()
        for listener in self._listeners:
            listener.close()
        for sock in self._listen_sockets:
            sock.close()
        logger.info(
            "Draining (%s): listeners closed, %d request(s) in flight, %d connection(s) open, "
            "deadline %.1fs",
            self._drain_reason,
            len(self.server_state.tasks),
            len(self.server_state.connections),
            self.drain_timeout,
        )

    def _nudge_idle_connections(self) -> None:
        """Let uvicorn's keep-alive timer close connections with no request.

        httptools/h11 only arm that timer after a response, so a connection
        that was accepted but has not sent (or not finished sending) a request
        would otherwise stay open until the drain deadline
        (https://github.com/Kludex/uvicorn/pull/1192). Re-arming it every
        tick means: close after `timeout_keep_alive` s of client silence.
        """
        for conn in list(self.server_state.connections):
            # Duck-typed on purpose: these are protocol internals (cycle,
            # timeout_keep_alive_task) shared by httptools and h11 today.
            proto: Any = conn
            cycle: Any = getattr(proto, "cycle", _MISSING)
            if cycle is _MISSING or not hasattr(proto, "timeout_keep_alive_task"):
                # websockets, the zttp sniffer, future protocols: fall back to
                # uvicorn's own graceful shutdown for them (once).
                if proto not in self._shut_down:
                    self._shut_down.add(proto)
                    proto.shutdown()
                continue
            idle = cycle is None or cycle.response_complete
            if idle and proto.timeout_keep_alive_task is None and not proto.transport.is_closing():
                proto.timeout_keep_alive_task = proto.loop.call_later(
                    proto.timeout_keep_alive, proto.timeout_keep_alive_handler
                )

    def _accepting(self) -> int:
        return sum(listener.pending for listener in self._listeners)

    async def _heartbeat(self) -> None:
        # main_loop's on_tick is what normally calls callback_notify; it has
        # returned, and without this the master "WORKER TIMEOUT"s a recycle
        # drain that outlasts gunicorn's `timeout`.
        if self.config.callback_notify is None:
            return
        now = time.time()
        if now - self.last_notified > self.config.timeout_notify:
            self.last_notified = now
            await self.config.callback_notify()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if not self.draining:
            limit = self.limit_max_requests
            if limit is not None and self.server_state.total_requests >= limit:
                self._begin_drain(f"max_requests {limit} reached", "max_requests")
            else:
                self._begin_drain("server exit", "exit")
        # Connections accepted just before the listeners closed may still have
        # connection_made() queued on the loop (uvloop schedules it); let them
        # register before the first "anything left?" check.
        await asyncio.sleep(0)

        state = self.server_state
        deadline = self._drain_started + self.drain_timeout
        next_report = time.monotonic() + 1.0
        # Connections accepted whose protocol is still to be made count as open ones.
        while (state.connections or state.tasks or self._accepting()) and not self.force_exit:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_report:
                next_report = now + 1.0
                logger.info(
                    "Draining: %d request(s) in flight, %d connection(s) open, %.1fs to deadline",
                    len(state.tasks),
                    len(state.connections),
                    deadline - now,
                )
            self._nudge_idle_connections()
            await self._heartbeat()
            await asyncio.sleep(_DRAIN_TICK)

        if (state.connections or state.tasks) and not self.force_exit:
            logger.error(
                "Drain deadline (%.1fs) exceeded: cancelling %d request(s), "
                "closing %d connection(s)",
                self.drain_timeout,
                len(state.tasks),
                len(state.connections),
            )
            DRAIN_CANCELLED.inc(len(state.tasks))
            for task in list(state.tasks):
                task.cancel(msg="drain deadline exceeded")
            if state.tasks:
                await asyncio.wait(list(state.tasks), timeout=_CANCEL_GRACE)
            for conn in list(state.connections):
                conn.transport.close()

        for server in getattr(self, "servers", []):
            # On Python >= 3.12.1 wait_closed() also waits for connections;
            # those are gone or closed by now, but never hang the exit on it.
            try:
                await asyncio.wait_for(server.wait_closed(), timeout=_CANCEL_GRACE)
            except asyncio.TimeoutError:
                pass

        if not self.force_exit:
            await self.lifespan.shutdown()
        logger.info(
            "Drain %s in %.2fs (%s); %d request(s) served by this worker; exiting",
            "aborted (forced)" if self.force_exit else "finished",
            time.monotonic() - self._drain_started,
            self._drain_reason,
            state.total_requests,
        )


class DrainingUvicornWorker(UvicornWorker):  # type: ignore[misc]
    """`UvicornWorker` whose every stop (signal or `max_requests`) drains.

    Its HTTP protocol is uvicorn's httptools one with limits on the request header section
    (GUNICORN_MAX_HEADER_BYTES, GUNICORN_HEADER_TIMEOUT; coffee_payment/http_protocol.py), and its
    responses carry no `server` header: nothing tells a client which server and version to attack.
    Gunicorn's `worker_connections` is uvicorn's `limit_concurrency` (503 beyond it); Gunicorn's
    `forwarded_allow_ips`, which uvicorn-worker hands to uvicorn's proxy headers handling, is the
    one rule for whose X-Forwarded-For and X-Forwarded-Proto count.
    """

    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "server_header": False}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = process_settings().server  # validated in the master by config/gunicorn.py
        # Gunicorn's own async workers read worker_connections; uvicorn-worker does not.
        self.config.limit_concurrency = self.cfg.worker_connections
        # With no trusted proxy uvicorn's ProxyHeadersMiddleware would only look and change nothing.
        self.config.proxy_headers = bool(self.cfg.forwarded_allow_ips)
        # uvicorn's Config takes a protocol class for `http`; its server builds each connection's
        # protocol with (config, server_state, app_state, _loop), so the limits are bound here.
        self.config.http = functools.partial(
            LimitedHttpToolsProtocol,
            max_header_bytes=limits.max_header_bytes,
            header_timeout=limits.header_timeout,
            # An overloaded worker still answers liveness: the kubelet would restart it, dropping
            # every connection, for being busy.
            unlimited_paths=LIVENESS_PATHS,
        )
        graceful = float(self.cfg.graceful_timeout)
        # The master SIGKILLs `graceful_timeout` s after *its* signal; finish
        # (and log what we give up) KILL_MARGIN s before that. For recycles,
        # the same bound stops a stuck request from holding a worker slot
        # forever. The floor only matters for a tiny --graceful-timeout.
        self.drain_timeout = max(graceful - KILL_MARGIN, graceful / 2)

    def init_process(self) -> None:
        # In the worker, after the fork: the descriptors its connections need (docs/operations.md).
        file_limit_raise(connections=self.cfg.worker_connections)
        super().init_process()

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config, drain_timeout=self.drain_timeout)
        # SIGQUIT is what the master sends for its own SIGINT/SIGQUIT; route it
        # to the server so it drains instead of being ignored
        # (https://github.com/Kludex/uvicorn-worker/issues/2). SIGINT/SIGTERM
        # are installed by Server.capture_signals() onto the same handler.
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGQUIT, server.handle_exit, signal.SIGQUIT, None)
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
