"""ASGI lifespan for the Django application, which has none of its own.

Uvicorn sends `lifespan.startup` when a worker starts and `lifespan.shutdown` after it has stopped
serving. Django refuses the lifespan scope (uvicorn then logs "ASGI 'lifespan' protocol appears
unsupported" and never says when the worker stops), so this wrapper answers it and runs the
hooks: at startup what runs beside the requests (the metrics gauges' sampler), at shutdown closing
what a worker opened lazily on its event loop (the provider's HTTP client).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Lifespan:
    def __init__(
        self,
        app: ASGIApp,
        *,
        on_shutdown: tuple[Callable[[], Awaitable[None]], ...],
        on_startup: tuple[Callable[[], Awaitable[None]], ...] = (),
    ) -> None:
        self.app = app
        self.on_shutdown = on_shutdown
        self.on_startup = on_startup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        # Bounded: the protocol has exactly one startup and one shutdown message.
        for _ in range(2):
            message = await receive()
            if message["type"] == "lifespan.startup":
                for hook in self.on_startup:
                    await hook()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._shutdown(send)
                return

    async def _shutdown(self, send: Send) -> None:
        failures = []
        for hook in self.on_shutdown:
            try:
                await hook()
            except Exception as exc:  # one failing hook must not skip the others
                log.exception("shutdown hook %s failed", getattr(hook, "__qualname__", hook))
                failures.append(f"{getattr(hook, '__qualname__', hook)}: {exc}")
        if failures:
            await send({"type": "lifespan.shutdown.failed", "message": "; ".join(failures)})
        else:
            await send({"type": "lifespan.shutdown.complete"})
