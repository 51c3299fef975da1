"""uvicorn's httptools protocol with a size and a time limit on each request's header section.

uvicorn bounds neither with httptools (https://github.com/Kludex/uvicorn/issues/157; the attempts
https://github.com/Kludex/uvicorn/pull/1684 and https://github.com/Kludex/uvicorn/pull/2019 were
closed unmerged; https://github.com/MagicStack/httptools/issues/87). As nginx does: a header
section past `max_header_bytes` (counted per read, after parsing) gets 431; one not complete
within `header_timeout` of its first byte gets 408 (silence: just closed). Any answer that closes
a connection with unread bytes lingers: it half-closes and discards what the client still sends
for up to LINGER_SECONDS, so the kernel does not reset the answer away. Relies on uvicorn's
`HttpToolsProtocol` internals; the tests fail when an upgrade changes them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

__all__ = ["LimitedHttpToolsProtocol"]

logger = logging.getLogger("uvicorn.error")

# How long a closing connection keeps discarding what the client still sends (nginx's
# lingering_timeout): time for a client to read its 4xx before the socket closes.
LINGER_SECONDS = 5.0


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

    def __init__(self, *args: Any, max_header_bytes: int, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_header_bytes = max_header_bytes
        self.header_timeout = header_timeout
        # True from the connection's start, or a request's first byte, until its headers are parsed.
        self._awaiting_headers = True
        self._message_began = False
        self._header_bytes = 0
        self._read_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False
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
        self._message_began = False
        self._read_bytes = len(data)
        super().data_received(data)
        if self._refused or not self._awaiting_headers or self.transport.is_closing():
            return
        # The clock of a request that did not arrive in one read starts now, with its first read;
        # a request that did (nearly all) never costs a timer.
        self._arm_header_timer()
        # A request began in this read (a fresh one, or one pipelined after a complete request):
        # count from this read; otherwise the header section simply grew by it.
        self._header_bytes = len(data) if self._message_began else self._header_bytes + len(data)
        if self._header_bytes > self.max_header_bytes:
            self._refuse_too_large()

    # --- parser callbacks ------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._message_began = True
        self._awaiting_headers = True
        self._header_bytes = 0

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        # Reads counted so far plus this one bound the section; only a bound over the limit (a
        # large read) needs the exact size: a section that arrived complete in one read.
        too_large = (
            self._header_bytes + self._read_bytes > self.max_header_bytes
            and self._header_section_size() > self.max_header_bytes
        )
        self._awaiting_headers = False
        self._header_bytes = 0
        self._cancel_header_timer()
        if too_large:
            self._refuse_too_large()
            return
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # not a websocket upgrade: a request cycle was made
            self.cycle.transport = self._cycle_transport  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        if not self._refused:  # the rest of a read after a refusal is parsed, never used
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    # --- limits ----------------------------------------------------------

    def _header_section_size(self) -> int:
        # The request line and header lines as sent, give or take optional whitespace.
        return len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)

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
        """Answer `status` and close; the rest of what the client sends is never parsed."""
        self._refused = True
        self._cancel_header_timer()
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
