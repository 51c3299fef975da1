"""A fake payment provider on a loopback port: the YooKassa API v3 subset this server speaks.

    python -m payments.fake_provider --port 8001 --webhook-url http://127.0.0.1:8000/v1/payments/webhook
    python -m payments.fake_provider --port 8001 --latency 0.3 --fail flaky

API (HTTP Basic shop_id:secret): `POST /v3/payments` (Idempotence-Key required; the same key
returns the same payment) and `GET /v3/payments/<id>`. The confirmation URL is this server's
`/confirm/<id>` page: "Pay" or "Cancel" settles the payment, POSTs a `payment.succeeded` or
`payment.canceled` notification to --webhook-url and sends the browser back to the return URL.
`GET /health` answers 200 once the fake serves.

Failure modes for the API (--fail): `error` answers 500 to every call; `hang` answers after
--hang-seconds (past any sane read timeout); `flaky` answers 500 to the first attempt of each
call and normally to its retry. --latency delays every API answer. Plain ASGI, no Django: tests
also run it in-process and reach into `FakeProvider` to change a payment's status.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import html
import json
import logging
import re
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger("payments.fake_provider")

FAIL_MODES = ("none", "error", "hang", "flaky")
API_PREFIX = "/v3"
# Bounds: a notification gets one short attempt; a request body is small JSON or a form.
NOTIFY_TIMEOUT = 5.0
MAX_BODY = 64 * 1024
_AMOUNT = re.compile(r"[0-9]{1,8}\.[0-9]{2}")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, description: str, parameter: str | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.body = {"type": "error", "id": str(uuid.uuid4()), "code": code, "description": description}
        if parameter:
            self.body["parameter"] = parameter


@dataclass
class FakePayment:
    id: str
    shop_id: str
    amount: dict[str, str]
    description: str
    metadata: dict[str, Any]
    return_url: str
    confirmation_url: str
    status: str = "pending"
    created_at: str = field(default_factory=lambda: _now())
    captured_at: str | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "paid": self.status == "succeeded",
            "amount": self.amount,
            "created_at": self.created_at,
            "description": self.description,
            "metadata": self.metadata,
            "recipient": {"account_id": self.shop_id, "gateway_id": "fake"},
            "refundable": self.status == "succeeded",
            "test": True,
        }
        if self.status == "pending":
            data["confirmation"] = {"type": "redirect", "confirmation_url": self.confirmation_url,
                                    "return_url": self.return_url}
        if self.captured_at:
            data["captured_at"] = self.captured_at
        if self.status == "canceled":
            data["cancellation_details"] = {"party": "yoo_money", "reason": "canceled_by_customer"}
        return data


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeProvider:
    """The ASGI app. State lives in memory; one instance is one provider."""

    def __init__(
        self,
        *,
        credentials: Mapping[str, str] | None = None,
        latency: float = 0.0,
        fail: str = "none",
        hang_seconds: float = 30.0,
        webhook_url: str | None = None,
    ) -> None:
        self.credentials = dict(credentials or {})
        self.latency, self.fail, self.hang_seconds = latency, fail, hang_seconds
        self.webhook_url = webhook_url
        self._client: aiohttp.ClientSession | None = None
        self.reset()

    def reset(self) -> None:
        """Forget every payment and call (tests share one running fake)."""
        self.payments: dict[str, FakePayment] = {}
        self.keys: dict[tuple[str, str], tuple[str, str]] = {}  # (shop, key) -> (body, payment id)
        self.calls: Counter[str] = Counter()  # "POST /payments", "GET /payments/<id>"
        self.notifications: list[dict[str, Any]] = []
        self._attempts: Counter[str] = Counter()

    # Test helpers ------------------------------------------------------------------------------

    def settle(self, payment_id: str, status: str) -> dict[str, Any]:
        """Move a pending payment to succeeded/canceled; the notification the provider would send."""
        payment = self.payments[payment_id]
        if payment.status == "pending":
            payment.status = status
            payment.captured_at = _now() if status == "succeeded" else None
        return {"type": "notification", "event": f"payment.{payment.status}", "object": payment.as_json()}

    # ASGI --------------------------------------------------------------------------------------

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        try:
            body = await _read_body(receive)
            if path.startswith(API_PREFIX + "/"):
                status, payload = await self._api(scope, method, path.removeprefix(API_PREFIX), body)
                await _respond(send, status, json.dumps(payload).encode(), "application/json")
            elif path == "/health":
                await _respond(send, 200, b'{"status": "ok"}', "application/json")
            elif path.startswith("/confirm/"):
                await self._confirm(send, method, path.removeprefix("/confirm/"), body)
            else:
                raise ApiError(404, "not_found", f"no route {path}")
        except ApiError as error:
            await _respond(send, error.status, json.dumps(error.body).encode(), "application/json")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        for _ in range(2):
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _api(self, scope: Message, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        shop_id = self._authenticate(headers.get("authorization", ""))
        key = headers.get("idempotence-key", "")
        call = f"{method} {path}"
        self.calls[call] += 1
        await asyncio.sleep(self.latency)
        await self._maybe_fail(f"{call} {key}")
        if method == "POST" and path == "/payments":
            return 200, self._create(shop_id, key, body, base_url=_base_url(scope, headers)).as_json()
        match = re.fullmatch(r"/payments/([A-Za-z0-9-]{1,64})", path)
        if method == "GET" and match:
            payment = self.payments.get(match.group(1))
            if payment is None or payment.shop_id != shop_id:
                raise ApiError(404, "not_found", "payment not found")
            return 200, payment.as_json()
        raise ApiError(404, "not_found", f"no API route {method} {path}")

    def _authenticate(self, authorization: str) -> str:
        scheme, _, encoded = authorization.partition(" ")
        try:
            shop_id, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            shop_id = secret = ""
        known = self.credentials.get(shop_id) == secret if self.credentials else bool(secret)
        if scheme.lower() != "basic" or not shop_id or not known:
            raise ApiError(401, "invalid_credentials", "shop id or secret key is wrong")
        return shop_id

    async def _maybe_fail(self, attempt: str) -> None:
        if self.fail == "error":
            raise ApiError(500, "internal_server_error", "fake provider: --fail error")
        if self.fail == "hang":
            await asyncio.sleep(self.hang_seconds)
            raise ApiError(500, "internal_server_error", "fake provider: --fail hang")
        if self.fail == "flaky":
            self._attempts[attempt] += 1
            if self._attempts[attempt] % 2 == 1:
                raise ApiError(500, "internal_server_error", "fake provider: --fail flaky")

    def _create(self, shop_id: str, key: str, body: bytes, *, base_url: str) -> FakePayment:
        if not 1 <= len(key) <= 64:
            raise ApiError(400, "invalid_request", "Idempotence-Key header is required", "Idempotence-Key")
        seen = self.keys.get((shop_id, key))
        if seen is not None:
            if seen[0] != body.decode(errors="replace"):
                raise ApiError(400, "invalid_request", "Idempotence-Key reused with another request", "Idempotence-Key")
            return self.payments[seen[1]]
        data = _payment_request(body)
        payment_id = str(uuid.uuid4())
        payment = FakePayment(
            id=payment_id,
            shop_id=shop_id,
            amount=data["amount"],
            description=data.get("description", ""),
            metadata=data.get("metadata") or {},
            return_url=data["confirmation"]["return_url"],
            confirmation_url=f"{base_url}/confirm/{payment_id}",
        )
        self.payments[payment_id] = payment
        self.keys[(shop_id, key)] = (body.decode(errors="replace"), payment_id)
        return payment

    async def _confirm(self, send: Send, method: str, payment_id: str, body: bytes) -> None:
        payment = self.payments.get(payment_id)
        if payment is None:
            raise ApiError(404, "not_found", "payment not found")
        if method == "GET":
            await _respond(send, 200, _confirmation_page(payment).encode(), "text/html; charset=utf-8")
            return
        action = urllib.parse.parse_qs(body.decode(errors="replace")).get("action", [""])[0]
        if method != "POST" or action not in ("succeed", "cancel"):
            raise ApiError(400, "invalid_request", "POST action=succeed or action=cancel", "action")
        notification = self.settle(payment_id, "succeeded" if action == "succeed" else "canceled")
        await self._notify(notification)
        await _respond(send, 303, b"", "text/plain", location=payment.return_url)

    async def _notify(self, notification: dict[str, Any]) -> None:
        self.notifications.append(notification)
        if not self.webhook_url:
            return
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=NOTIFY_TIMEOUT))
        try:
            async with self._client.post(self.webhook_url, json=notification) as response:
                text = await response.text()
            log.info("notified %s: HTTP %d %s", self.webhook_url, response.status, text[:200])
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            # The real provider retries for a day; the fake tells whoever runs it.
            log.warning("notification to %s failed: %s", self.webhook_url, exc)


def _payment_request(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise ApiError(400, "invalid_request", "body is not JSON") from None
    amount = data.get("amount") if isinstance(data, dict) else None
    if not isinstance(amount, dict) or not _AMOUNT.fullmatch(str(amount.get("value", ""))):
        raise ApiError(400, "invalid_request", "amount.value must be a decimal string like 120.00", "amount.value")
    if amount.get("currency") != "RUB":
        raise ApiError(400, "invalid_request", "amount.currency must be RUB", "amount.currency")
    confirmation = data.get("confirmation")
    if not isinstance(confirmation, dict) or confirmation.get("type") != "redirect" or not confirmation.get("return_url"):
        raise ApiError(400, "invalid_request", "confirmation must be a redirect with return_url", "confirmation")
    if len(str(data.get("description", ""))) > 128:
        raise ApiError(400, "invalid_request", "description is longer than 128 characters", "description")
    return data


def _base_url(scope: Message, headers: Mapping[str, str]) -> str:
    host = headers.get("host") or "{}:{}".format(*scope["server"])
    return f"{scope.get('scheme', 'http')}://{host}"


def _confirmation_page(payment: FakePayment) -> str:
    amount = html.escape(f"{payment.amount['value']} {payment.amount['currency']}")
    if payment.status != "pending":
        buttons = f"<p>This payment is {html.escape(payment.status)}.</p>"
    else:
        buttons = (
            '<form method="post"><button name="action" value="succeed">Pay</button> '
            '<button name="action" value="cancel">Cancel</button></form>'
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Fake provider</title></head><body>"
        f"<h1>Fake payment provider</h1><p>{html.escape(payment.description)}</p><p>{amount}</p>"
        f"{buttons}</body></html>"
    )


async def _read_body(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, "invalid_request", "request body too large")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, content_type: str, *, location: str | None = None) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    if location:
        headers.append((b"location", location.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _credentials(text: str) -> dict[str, str]:
    pairs = [entry.split(":", 1) for entry in text.split(",") if entry.strip()]
    if any(len(pair) != 2 or not pair[0].strip() or not pair[1].strip() for pair in pairs):
        raise argparse.ArgumentTypeError("expected shop_id:secret[,shop_id:secret...]")
    return {shop.strip(): secret.strip() for shop, secret in pairs}


def _seconds(text: str) -> float:
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", text) or float(text) > 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (allowed: 0..3600)")
    return float(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (allowed: 1..65535)")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m payments.fake_provider", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=8001)
    parser.add_argument("--latency", type=_seconds, default=0.0, help="seconds added to every API answer")
    parser.add_argument("--fail", choices=FAIL_MODES, default="none")
    parser.add_argument("--hang-seconds", type=_seconds, default=30.0, help="how long --fail hang waits")
    parser.add_argument("--webhook-url", help="where to POST notifications, e.g. http://127.0.0.1:8000/v1/payments/webhook")
    parser.add_argument("--credentials", type=_credentials, default={},
                        help="shop_id:secret,... to accept (default: any non-empty secret)")
    args = parser.parse_args(argv)
    app = FakeProvider(credentials=args.credentials, latency=args.latency, fail=args.fail,
                       hang_seconds=args.hang_seconds, webhook_url=args.webhook_url)
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s fake-provider %(levelname)s %(message)s")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", lifespan="on")


if __name__ == "__main__":
    main()
