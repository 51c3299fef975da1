"""ASGI lifespan for the Django application, which has none of its own.

Uvicorn sends `lifespan.startup` when a worker starts and `lifespan.shutdown` after it has stopped
serving. Django refuses the lifespan scope (uvicorn then logs "ASGI 'lifespan' protocol appears
unsupported" and never says when the worker stops), so this wrapper answers it and runs the
hooks: at startup what runs beside the requests (the metrics gauges' sampler), at shutdown closing
what a worker opened lazily on its event loop (the provider's HTTP client).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from coffee_payment.asgi_types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


class Lifespan:
    def __init__(
        self, app: ASGIApp, *, on_shutdown: tuple[Hook, ...], on_startup: tuple[Hook, ...] = ()
    ) -> None:
        self.app = app
        self.on_shutdown = on_shutdown
        self.on_startup = on_startup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await lifespan_serve(receive, send, on_shutdown=self.on_shutdown, on_startup=self.on_startup)


async def lifespan_serve(
    receive: Receive, send: Send, *, on_shutdown: tuple[Hook, ...], on_startup: tuple[Hook, ...] = ()
) -> None:
    """Answer one lifespan scope: startup after running every startup hook, shutdown after every
    shutdown hook. Also what the development tools' bare ASGI apps (the fake provider, the bench's
    ceiling) answer with."""
    # Bounded: the protocol has exactly one startup and one shutdown message.
    for _ in range(2):
        message = await receive()
        if message["type"] == "lifespan.startup":
            for hook in on_startup:
                await hook()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await _shutdown(send, on_shutdown)
            return


async def _shutdown(send: Send, on_shutdown: tuple[Hook, ...]) -> None:
    failures = []
    for hook in on_shutdown:
        try:
            await hook()
        except Exception as exc:  # one failing hook must not skip the others
            log.exception("shutdown hook %s failed", getattr(hook, "__qualname__", hook))
            failures.append(f"{getattr(hook, '__qualname__', hook)}: {exc}")
    if failures:
        await send({"type": "lifespan.shutdown.failed", "message": "; ".join(failures)})
    else:
        await send({"type": "lifespan.shutdown.complete"})
