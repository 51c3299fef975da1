"""DrainingUvicornWorker's pieces in-process; tests/integration drives it with real signals (R3.1-R3.6, R2.4)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from gunicorn.config import Config as GunicornConfig
from gunicorn.glogging import Logger
from uvicorn.config import Config

from coffee_payment.workers import KILL_MARGIN, DrainingServer, DrainingUvicornWorker


@contextmanager
def worker(**settings: Any) -> Iterator[DrainingUvicornWorker]:
    cfg = GunicornConfig()
    for name, value in settings.items():
        cfg.set(name, value)
    built = DrainingUvicornWorker(0, 1, [], None, cfg.timeout, cfg, Logger(cfg))
    try:
        yield built
    finally:
        built.tmp.close()  # the heartbeat file Gunicorn's Worker opens


def server() -> DrainingServer:
    return DrainingServer(Config(app="devtools.asgi_app:app"), drain_timeout=5.0)


@pytest.mark.parametrize(("graceful_timeout", "drain_timeout"),
                         [(30 + KILL_MARGIN, 30.0), (10 + KILL_MARGIN, 10.0), (KILL_MARGIN + 1, (KILL_MARGIN + 1) / 2)])
def test_drain_deadline_is_the_master_deadline_less_the_kill_margin(graceful_timeout: int, drain_timeout: float) -> None:
    """config/gunicorn.py hands Gunicorn GUNICORN_GRACEFUL_TIMEOUT + KILL_MARGIN; the worker gives up
    after GUNICORN_GRACEFUL_TIMEOUT (never less than half, for a tiny --graceful-timeout)."""
    with worker(graceful_timeout=graceful_timeout) as built:
        assert built.drain_timeout == drain_timeout


def test_worker_hands_uvicorn_the_keepalive_and_max_requests_gunicorn_computed() -> None:
    with worker(keepalive=3, max_requests=100, max_requests_jitter=10) as built:
        assert built.config.timeout_keep_alive == 3
        assert 100 <= built.config.limit_max_requests == built.max_requests <= 110


def test_second_sigint_forces_exit_but_the_ctrl_c_pair_stays_graceful() -> None:
    draining = server()
    draining.handle_exit(signal.SIGINT, None)
    draining.handle_exit(signal.SIGQUIT, None)  # Ctrl+C: the terminal's SIGINT, then the master's SIGQUIT
    assert (draining.should_exit, draining.force_exit) == (True, False)
    draining.handle_exit(signal.SIGINT, None)  # uvicorn's "Ctrl+C again to force quit"
    assert draining.force_exit


def test_signals_are_not_re_raised_after_the_drain() -> None:
    # uvicorn would re-raise them under UvicornWorker's SIG_DFL and kill the worker before
    # Gunicorn's worker_exit hook runs; the drain is the signal's whole effect.
    draining = server()
    draining.handle_exit(signal.SIGTERM, None)
    assert draining._captured_signals == []


async def test_responses_starting_during_the_drain_carry_connection_close() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"Connection", b"keep-alive")]})

    draining = server()
    wrapped = draining._close_when_draining(app)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {}

    await wrapped({"type": "http"}, receive, send)
    draining.draining = True
    await wrapped({"type": "http"}, receive, send)
    assert sent[0]["headers"] == [(b"Connection", b"keep-alive")]
    assert sent[1]["headers"] == [(b"connection", b"close")]
