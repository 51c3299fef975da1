"""uvicorn's httptools protocol with a size and a time limit on each request's header section.

uvicorn bounds neither with httptools (https://github.com/Kludex/uvicorn/issues/157; the attempts
https://github.com/Kludex/uvicorn/pull/1684 and https://github.com/Kludex/uvicorn/pull/2019 were
closed unmerged; https://github.com/MagicStack/httptools/issues/87). As nginx does: a header
section past `max_header_bytes` (one request's, however many are pipelined in a read) gets 431;
one not complete within `header_timeout` of its first byte gets 408 (silence: just closed). A
refusal (431, 408, or uvicorn's 400 for a request it cannot parse) waits for the requests parsed
before it on the connection: they are answered, in order, then it. Any answer that closes a
connection with unread bytes lingers: it half-closes and discards what the client still sends for
up to LINGER_SECONDS, so the kernel does not reset the answer away. A request uvicorn answers 503
for its concurrency limit is counted, and logged once every OVERLOAD_LOG_SECONDS; the liveness
probe's path is never refused so. Relies on
uvicorn's `HttpToolsProtocol` internals; the tests fail when an upgrade changes them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from coffee_payment.log_bounds import RateLimitedWarning
from coffee_payment.metrics import OVERLOAD_REFUSALS

__all__ = ["LimitedHttpToolsProtocol"]

logger = logging.getLogger("uvicorn.error")

# How long a closing connection keeps discarding what the client still sends (nginx's
# lingering_timeout): time for a client to read its 4xx before the socket closes.
LINGER_SECONDS = 5.0
# uvicorn logs every 503 of its concurrency limit; an overloaded worker logs once this often.
OVERLOAD_LOG_SECONDS = 10.0
_overloaded = RateLimitedWarning(
    logger, "answered 503: %d connections open and %d requests in flight, the limit is GUNICORN_WORKER_CONNECTIONS=%d",
    seconds=OVERLOAD_LOG_SECONDS)
# Stands in for uvicorn's logger while it answers such a request: its own warning for each is
# replaced by the one above. Made apart from logging's registry, so no configuration enables it.
_SILENT = logging.Logger("coffee_payment.overloaded", logging.CRITICAL + 1)


class _LingeringClose:
    """A request cycle's transport whose close() is the protocol's lingering close."""

    def __init__(self, protocol: LimitedHttpToolsProtocol, transport: asyncio.Transport) -> None:
        self._protocol = protocol
        self._transport = transport
        # What a cycle calls on every response, bound once rather than found by __getattr__.
        self.write = transport.write
        self.is_closing = transport.is_closing

    def close(self) -> None:
        # The latest request's more_body: the parser has not reached the end of its body (with
        # pipelining, a request parsed after the closing one means the closing one's body ended).
        self._protocol.close_lingering(request_unfinished=self._protocol.cycle.more_body)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` that refuses oversized (431) and slow (408) request header sections.

    Built by uvicorn's server with `config`, `server_state`, `app_state` and `_loop`; the limits
    are bound first, e.g. `functools.partial(LimitedHttpToolsProtocol, max_header_bytes=32768,
    header_timeout=10)` as uvicorn's `Config(http=...)`.
    """

    def __init__(self, *args: Any, max_header_bytes: int, header_timeout: float,
                 unlimited_paths: frozenset[bytes] = frozenset(), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_header_bytes = max_header_bytes
        self.header_timeout = header_timeout
        # Request targets answered whatever the concurrency limit (the liveness probe's).
        self.unlimited_paths = unlimited_paths
        # True from the connection's start, or a request's first byte, until its headers are parsed.
        self._awaiting_headers = True
        # Counting one request's header section: its bytes before the read being parsed, the
        # requests begun in that read, and whether a request was still arriving when it started.
        self._header_bytes = 0
        self._begun_in_read = 0
        self._in_message = False
        self._read_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False
        # A refusal waiting for the answers to the requests parsed before it: (status, reason).
        self._refusal: tuple[int, bytes] | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._cycle_transport: _LingeringClose | None = None

    # --- connection ------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._cycle_transport = _LingeringClose(self, transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def close_lingering(self, *, request_unfinished: bool) -> None:
        """Close; first, if the client may still be sending, half-close and discard what it sends."""
        transport = self.transport
        if transport.is_closing():
            return
        if not request_unfinished or not transport.can_write_eof():
            transport.close()
            return
        self._refused = True  # data_received discards from now on
        self._cancel_header_timer()
        self.flow.resume_reading()
        transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        # At a boundary: no request was arriving when this read started.
        at_boundary = not self._in_message
        self._begun_in_read = 0
        self._read_bytes = len(data)
        super().data_received(data)
        if self._refused or not self._awaiting_headers or self.transport.is_closing():
            return
        # The clock of a request that did not arrive in one read starts now, with its first read;
        # a request that did (nearly all) never costs a timer.
        self._arm_header_timer()
        if not self._in_message:  # nothing but the empty lines allowed before a request
            return
        if self._begun_in_read == 0:
            # The section began in an earlier read: it grew by all of this one.
            self._header_bytes += len(data)
        elif self._begun_in_read == 1 and at_boundary:
            # It began with this read: all of the read is its own.
            self._header_bytes = len(data)
        else:
            # Pipelined after other requests in this read: only its own part counts, whatever
            # they took (a whole read counted here once refused requests that were already running).
            self._header_bytes = self._section_so_far(data)
        if self._header_bytes > self.max_header_bytes:
            self._refuse_too_large()

    # --- parser callbacks ------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun_in_read += 1
        self._in_message = True
        self._awaiting_headers = True
        self._header_bytes = 0

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        # A section parsed whole from one read is bounded by the read; only a read over the limit
        # needs the exact size. One that spanned reads is measured.
        spanned = self._begun_in_read == 0
        too_large = (spanned or self._read_bytes > self.max_header_bytes) and (
            self._header_section_size() > self.max_header_bytes)
        self._awaiting_headers = False
        self._header_bytes = 0
        self._cancel_header_timer()
        if too_large:
            self._refuse_too_large()
            return
        limit = self.limit_concurrency
        overloaded = (limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit)
                      and not (self.parser.should_upgrade() and self._should_upgrade()))  # uvicorn's own test
        if overloaded and self.url in self.unlimited_paths:
            # Liveness says the event loop answers, not that it has room: no 503, no restart.
            self.limit_concurrency = None
        elif overloaded:
            # uvicorn's own check, just below, answers 503; counted and logged here instead of its
            # line per request.
            OVERLOAD_REFUSALS.inc()
            _overloaded(len(self.connections), len(self.tasks), limit)
            self.logger = _SILENT
        previous = self.cycle
        try:
            super().on_headers_complete()
        finally:
            if overloaded:
                self.logger, self.limit_concurrency = logger, limit
        if self.cycle is not previous:  # not a websocket upgrade: a request cycle was made
            self.cycle.transport = self._cycle_transport  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        if not self._refused:  # the rest of a read after a refusal is parsed, never used
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        if not self._refused:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The refused request's turn, once every request parsed before it is answered.
        if self._refusal is not None and not self._answers_pending() and not self.transport.is_closing():
            self._unset_keepalive_if_required()
            self._write_refusal(*self._refusal)

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to a request it cannot parse, after the requests parsed before it.
        self._refuse(400, msg.encode("ascii"))

    # --- limits ----------------------------------------------------------

    def _header_section_size(self) -> int:
        # The request line and header lines as sent, give or take optional whitespace.
        return len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _section_so_far(self, data: bytes) -> int:
        """The size of a section begun in `data` after other requests: what the parser has of it,
        and the line in progress (after the read's last newline, which is the section's own once it
        has a header). Never more than it took, so no request is refused for its neighbours."""
        size = self._header_section_size()
        if self.headers:
            size += len(data) - data.rfind(b"\n") - 1
        return size

    def _answers_pending(self) -> bool:
        """A request parsed earlier on this connection is still to be answered."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _refuse_too_large(self) -> None:
        logger.warning("%s: request header section over %d bytes; answered 431", self._peer(), self.max_header_bytes)
        self._refuse(431, b"Request Header Fields Too Large")

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout_handler)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout_handler(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        if self.headers is not None:  # set by on_message_begin: a request has begun
            logger.warning(
                "%s: request headers incomplete after %gs; answered 408", self._peer(), self.header_timeout
            )
            self._refuse(408, b"Request Timeout")
        else:
            # Nothing sent since connecting: no request to answer.
            self._refused = True
            self.transport.close()

    def _refuse(self, status: int, reason: bytes) -> None:
        """Answer `status` and close once the requests parsed before are answered; the rest of what
        the client sends is never parsed."""
        self._refused = True
        self._cancel_header_timer()
        if self._answers_pending():
            self._refusal = (status, reason)
        else:
            self._write_refusal(status, reason)

    def _write_refusal(self, status: int, reason: bytes) -> None:
        self._refusal = None
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: ", str(len(reason)).encode("ascii"), b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            reason,
        ])
        self.transport.write(b"".join(content))
        self.close_lingering(request_unfinished=True)

    def _peer(self) -> str:
        return "%s:%d" % self.client if self.client else "client"
