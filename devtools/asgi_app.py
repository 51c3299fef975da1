"""A bare ASGI application the tests and bench/recycling.py serve with `gunicorn -c config/gunicorn.py`.

    GET  /health            200 "ok" at once
    GET  /slow?seconds=N    200 after asyncio.sleep(N)
    POST /echo              200 with the whole request body (reads every chunk, so a client can
                            hold a request in flight by trickling its body)
    GET  /stall?seconds=N   a 200 with content-length 10: 5 bytes, N seconds, the other 5

Every response carries `x-worker-pid`, so a client can count recycles. `app` is the bare
application; `timeout_app` is it inside RequestTimeoutMiddleware with GUNICORN_TIMEOUT seconds,
as coffee_payment/asgi.py composes Django's.
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import parse_qs

from coffee_payment.conf import process_settings
from coffee_payment.asgi_types import Receive, Scope, Send, plain_answer
from coffee_payment.request_timeout import RequestTimeoutMiddleware


async def _respond(send: Send, status: int, body: bytes) -> None:
    await plain_answer(send, status, body, headers=[(b"x-worker-pid", str(os.getpid()).encode())])


def _seconds(scope: Scope) -> float:
    return float(parse_qs(scope.get("query_string", b"").decode()).get("seconds", ["1"])[0])


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return  # lifespan: nothing to start or stop
    path: str = scope["path"]
    if path == "/health":
        await _respond(send, 200, b"ok")
    elif path == "/slow":
        await asyncio.sleep(_seconds(scope))
        await _respond(send, 200, b"slept")
    elif path == "/echo":
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await _respond(send, 200, bytes(body))
    elif path == "/stall":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"12345", "more_body": True})
        await asyncio.sleep(_seconds(scope))
        await send({"type": "http.response.body", "body": b"67890"})
    else:
        await _respond(send, 404, b"not found")


timeout_app = RequestTimeoutMiddleware(app, timeout=process_settings().server.timeout)
