"""The ceiling: a bare ASGI app that answers the bench's paths with no framework at all.

- `GET /health` and `GET /v1/order-status/<id>`: a fixed JSON body (no database: this is what the
  server alone can do);
- `POST /v1/orders/<id>/payment`: one `POST /payments` to the payment provider (the settings' URL
  and first shop, as the project would send it) on one persistent aiohttp session sized like the
  project's, then a 303 to the confirmation page. What the async provider wait costs with nothing
  else around it.
"""

from __future__ import annotations

import base64
import uuid

import aiohttp

from coffee_payment.asgi_types import Receive, Scope, Send
from coffee_payment.conf import process_settings
from coffee_payment.lifespan import lifespan_serve

HEALTH = b'{"status": "ok"}'
STATUS = b'{"order_id": "x", "status": "created", "label": "Waiting for payment", "final": false, "expired": false}'
# The project's pool size (payments.provider.POOL_CONNECTIONS), without importing the project.
POOL_CONNECTIONS = 100
_client: aiohttp.ClientSession | None = None


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan_serve(receive, send, on_shutdown=(_client_close,))
        return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):  # the request body, if any, is ignored
        pass
    path = scope["path"]
    if scope["method"] == "POST" and path.startswith("/v1/orders/") and path.endswith("/payment"):
        location = await _payment_create(path.split("/")[3])
        await _respond(send, status=303, body=b"", headers=[(b"location", location.encode())])
    elif path.startswith("/v1/order-status/"):
        await _respond(send, status=200, body=STATUS, headers=[(b"content-type", b"application/json")])
    else:
        await _respond(send, status=200, body=HEALTH, headers=[(b"content-type", b"application/json")])


async def _payment_create(order_id: str) -> str:
    global _client
    if _client is None:
        _client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=POOL_CONNECTIONS,
                                                                       limit_per_host=POOL_CONNECTIONS))
    provider = process_settings().provider
    shop_id, secret = next(iter(provider.secrets.items()))
    body = {"amount": {"value": "159.00", "currency": "RUB"}, "capture": True,
            "confirmation": {"type": "redirect", "return_url": "http://127.0.0.1/"},
            "description": f"Cappuccino, order {order_id}", "metadata": {"order_id": order_id}}
    headers = {"Authorization": "Basic " + base64.b64encode(f"{shop_id}:{secret}".encode()).decode(),
               "Idempotence-Key": str(uuid.uuid5(uuid.NAMESPACE_URL, order_id))}
    timeout = aiohttp.ClientTimeout(total=None, connect=provider.connect_timeout, sock_read=provider.read_timeout)
    async with _client.post(f"{provider.url}/payments", json=body, headers=headers, timeout=timeout) as response:
        response.raise_for_status()
        payment = await response.json()
    return str(payment["confirmation"]["confirmation_url"])


async def _respond(send: Send, *, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _client_close() -> None:
    global _client
    if _client is not None:
        await _client.close()
        _client = None
