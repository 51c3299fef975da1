"""The worker's listening sockets: connections accepted so that running out of file descriptors is
seen, and the file limit raised to what the connection limit needs.

uvloop accepts inside libuv, which meets EMFILE by accepting and closing the waiting connections
(libuv's "EMFILE trick") and tells nobody: clients are reset, nothing is logged or counted. A
`Listener` accepts with `socket.accept()` instead and hands each connection to the loop
(`connect_accepted_socket`), as asyncio's own selector loop serves its servers; out of descriptors
it logs (at most once every LOG_SECONDS), counts, and stops accepting for ACCEPT_RETRY_SECONDS, so
the connections wait in the listen backlog, for this worker or a sibling, instead of being reset.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import ssl as ssl_module
from collections.abc import Callable

from coffee_payment.log_bounds import RateLimitedWarning
from coffee_payment.metrics import ACCEPT_ERRORS

__all__ = ["FILE_RESERVE", "Listener", "file_limit_raise"]

logger = logging.getLogger("uvicorn.error")

# asyncio's constants.ACCEPT_RETRY_DELAY: how long accepting pauses after EMFILE and its kin.
ACCEPT_RETRY_SECONDS = 1.0
LOG_SECONDS = 10.0
# Errors that say the process or the system is out of a resource, not that the socket failed.
OUT_OF_RESOURCES = {errno.EMFILE: "EMFILE", errno.ENFILE: "ENFILE", errno.ENOBUFS: "ENOBUFS", errno.ENOMEM: "ENOMEM"}
# File descriptors a worker needs besides its client connections: the database pool (10), the
# provider's connections (100), SQLite's files of the request threads, the loop's own, the
# listeners, the heartbeat and metric files, standard streams (docs/operations.md, sizing).
FILE_RESERVE = 256
# The soft limit asked for when the hard one is unlimited: Linux's default nr_open.
NO_FILE_CEILING = 1 << 20

_out_of_files = RateLimitedWarning(
    logger, "cannot accept a connection: %s (file limit %d); not accepting for %.0f s, the connections wait "
    "in the listen backlog", seconds=LOG_SECONDS)


def file_limit_raise(*, connections: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (as Go's runtime and systemd advise:
    the soft default of 1024 is for select()); warn when even that is short of `connections` plus
    FILE_RESERVE. The soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else NO_FILE_CEILING
    if soft == resource.RLIM_INFINITY or soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # a limit above the kernel's nr_open
            pass
    needed = connections + FILE_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        logger.warning(
            "GUNICORN_WORKER_CONNECTIONS=%d needs about %d file descriptors per worker and the file limit "
            "(RLIMIT_NOFILE) is %d: connections beyond about %d cannot be accepted (logged, counted) before "
            "the connection limit answers 503; raise the container's nofile limit or lower "
            "GUNICORN_WORKER_CONNECTIONS", connections, needed, soft, max(soft - FILE_RESERVE, 0))
    return soft


class Listener:
    """Accepts connections on one listening socket for the running loop, `protocol_factory` serving
    each (behind TLS with `ssl`); `pending` counts those accepted whose protocol has not started yet."""

    def __init__(self, sock: socket.socket, *, protocol_factory: Callable[[], asyncio.Protocol],
                 ssl: ssl_module.SSLContext | None = None) -> None:
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.ssl = ssl
        self.loop = asyncio.get_running_loop()
        self.pending = 0
        self._paused: asyncio.TimerHandle | None = None
        self._closed = False
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting (the socket is its owner's to close)."""
        if self._closed:
            return
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
        else:
            self.loop.remove_reader(self.sock.fileno())

    def _accept(self) -> None:
        # One connection per wake-up, as libuv accepts since https://github.com/libuv/libuv/pull/3696:
        # the socket stays readable while more wait, and the workers sharing it, woken together,
        # each take some. Accepting all at once, the first worker awake took nearly every
        # connection of a burst (status polls: 13 % more CPU per answer, a core left idle).
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as error:
            if error.errno not in OUT_OF_RESOURCES:
                raise
            self._pause(OUT_OF_RESOURCES[error.errno])
            return
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending += 1
        self.loop.create_task(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.protocol_factory, conn, ssl=self.ssl)
        except OSError as error:  # the client left before its transport was made, or its TLS failed
            logger.debug("accepted connection lost before it was served: %s", error)
            conn.close()
        except Exception:
            logger.exception("accepted connection could not be served")
            conn.close()
        finally:
            self.pending -= 1

    def _pause(self, error: str) -> None:
        ACCEPT_ERRORS.labels(error).inc()
        _out_of_files(error, resource.getrlimit(resource.RLIMIT_NOFILE)[0], ACCEPT_RETRY_SECONDS)
        self.loop.remove_reader(self.sock.fileno())
        self._paused = self.loop.call_later(ACCEPT_RETRY_SECONDS, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if not self._closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)
