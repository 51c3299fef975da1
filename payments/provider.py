"""The payment provider's REST protocol (YooKassa API v3), spoken with one aiohttp session per worker.

- `POST {url}/payments` with an `Idempotence-Key` creates a payment; the same key always returns
  the same payment, so a retry never charges twice.
- `GET {url}/payments/{id}` reads a payment: the only source of truth for its status
  (notification bodies are never trusted).
- Notifications (`payment.succeeded`, `payment.canceled`, ...) only say which payment to re-read.

Every call authenticates as the merchant's shop (HTTP Basic, shop id : secret key from
PAYMENT_PROVIDER_SECRETS), waits at most the configured connect/read timeouts and retries timeouts,
refused connections and 5xx answers a bounded number of times with the same key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import reprlib
import uuid
import weakref
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
from django.conf import settings

from payments.errors import InvalidParameter, ProviderRejected, ProviderUnavailable, ShopNotConfigured
from payments.models import IDENTIFIER

_IDENTIFIER = re.compile(IDENTIFIER)
IDENTIFIER_RULE = "1-64 letters, digits, '-' or '_'"

log = logging.getLogger(__name__)

# Payment statuses of API v3; notifications name the same ones as `payment.<status>`.
PAYMENT_STATUSES = frozenset({"pending", "waiting_for_capture", "succeeded", "canceled"})
CURRENCY = "RUB"
# Provider limit on the payment description.
DESCRIPTION_MAX = 128
# Fixed namespace: the key of an order must be the same in every process and after every restart.
IDEMPOTENCE_NAMESPACE = uuid.UUID("6f1d7c1e-5b7a-4d3c-9f3e-2b8c1a9e0d41")
# Seconds before retry n is `RETRY_BACKOFF * n`: short, the customer is waiting.
RETRY_BACKOFF = 0.2
# 202: "still processing, repeat with the same key"; 429: rate limited. Both are worth a retry.
RETRY_STATUSES = frozenset({202, 429})


@dataclass(frozen=True)
class ProviderPayment:
    id: str
    status: str
    amount_kopecks: int
    currency: str
    # metadata.order_id, as we sent it at creation.
    order_id: str | None
    confirmation_url: str | None


@dataclass(frozen=True)
class Notification:
    event: str
    payment_id: str
    # Untrusted: used only to find the order when the payment id is not stored yet.
    order_id_hint: str | None


def idempotence_key(order_id: str) -> str:
    """The one key of an order's payment: every attempt for the order sends the same."""
    return str(uuid.uuid5(IDEMPOTENCE_NAMESPACE, order_id))


def rubles(kopecks: int) -> str:
    return f"{kopecks // 100}.{kopecks % 100:02d}"


@dataclass(frozen=True)
class Answer:
    """A provider response, read whole."""

    status_code: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


# One client per event loop: a Uvicorn worker has exactly one, so this is one client per worker
# with one connection pool. Created on first use inside a request, so never in the Gunicorn master
# and never shared across a fork; closed by the ASGI lifespan shutdown (coffee_payment.asgi).
#
# aiohttp rather than httpx: httpx 0.28's pool (httpcore 1.0) closes every connection it releases
# once more than max_keepalive_connections are open, so under load every provider call paid a new
# connection (against the real provider, a TLS handshake), and it spends CPU quadratic in open
# connections and queued calls on every call (https://github.com/encode/httpcore/pull/1035). Its
# fork httpx2 fixes both but still polls every idle connection twice per call
# (https://github.com/pydantic/httpx2/pull/1169). aiohttp's pool reuses connections in constant
# time: a call costs about a third of httpx2's CPU (PROJECT.md, Performance).
# Up to POOL_CONNECTIONS calls at once per worker, every connection kept for the next call; more
# calls wait for a connection up to the connect timeout.
POOL_CONNECTIONS = 100
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()


def _client() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.closed:
        client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=POOL_CONNECTIONS, limit_per_host=POOL_CONNECTIONS),
            headers={"User-Agent": "coffee-payment-server"},
        )
        _clients[loop] = client
    return client


async def aclose() -> None:
    """Close this event loop's client (at worker shutdown; tests call it after each test)."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.close()


def _auth(shop_id: str) -> str:
    """The Authorization header of the merchant's shop (HTTP Basic)."""
    secret = settings.PAYMENT_PROVIDER_SECRETS.get(shop_id)
    if not secret:
        log.error("no secret key for shop %r in PAYMENT_PROVIDER_SECRETS: its merchants cannot take payments", shop_id)
        raise ShopNotConfigured("Payments for this coffee machine are not set up yet. Please tell the staff.")
    return "Basic " + base64.b64encode(f"{shop_id}:{secret}".encode()).decode("ascii")


# What to call a transport failure in the logs and in ProviderUnavailable.detail, most specific first.
_FAILURE_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (aiohttp.ConnectionTimeoutError, "ConnectTimeout"),
    (aiohttp.SocketTimeoutError, "ReadTimeout"),
    (aiohttp.ClientConnectorError, "ConnectError"),
    (asyncio.TimeoutError, "Timeout"),
)
# Timeouts, refused and reset connections, a body cut short: worth another attempt.
_TRANSPORT_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


def _failure(exc: BaseException) -> str:
    kind = next((name for cls, name in _FAILURE_KINDS if isinstance(exc, cls)), type(exc).__name__)
    return f"{kind}: {exc}" if str(exc) else kind


async def _request(
    method: str, path: str, *, shop_id: str, retries: int, body: dict[str, Any] | None = None, key: str | None = None
) -> Answer:
    """One API call with bounded retries; a response below 500 (other than 202/429) is returned."""
    headers = {"Authorization": _auth(shop_id)}
    if key:
        headers["Idempotence-Key"] = key
    url = f"{settings.PAYMENT_PROVIDER_URL}{path}"
    connect, read = settings.PAYMENT_PROVIDER_CONNECT_TIMEOUT, settings.PAYMENT_PROVIDER_READ_TIMEOUT
    # connect: waiting for a pooled connection and opening one; sock_read: each wait for the answer.
    timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=read)
    failure = ""
    for attempt in range(retries + 1):
        if attempt:
            await asyncio.sleep(RETRY_BACKOFF * attempt)
        try:
            async with _client().request(method, url, json=body, headers=headers, timeout=timeout) as response:
                answer = Answer(response.status, await response.read())
        except _TRANSPORT_ERRORS as exc:
            failure = _failure(exc)
        else:
            if answer.status_code < 500 and answer.status_code not in RETRY_STATUSES:
                return answer
            failure = f"HTTP {answer.status_code}"
        log.warning("provider %s %s attempt %d/%d failed: %s", method, path, attempt + 1, retries + 1, failure)
    raise ProviderUnavailable("The payment service did not answer. Please try again in a moment.", detail=failure)


def _payment(response: Answer) -> ProviderPayment:
    try:
        data = response.json()
        amount = Decimal(data["amount"]["value"])
        metadata = data.get("metadata") or {}
        confirmation = data.get("confirmation") or {}
        payment = ProviderPayment(
            id=str(data["id"]),
            status=str(data["status"]),
            amount_kopecks=int(amount * 100),
            currency=str(data["amount"]["currency"]),
            order_id=metadata.get("order_id"),
            confirmation_url=confirmation.get("confirmation_url"),
        )
    except (ValueError, KeyError, TypeError, AttributeError, InvalidOperation) as exc:
        log.error("provider answered HTTP %d with an unreadable payment: %r", response.status_code, exc)
        raise ProviderUnavailable("The payment service gave an answer we could not read. Please try again.") from None
    if payment.status not in PAYMENT_STATUSES or amount * 100 != payment.amount_kopecks:
        log.error("provider payment %s has status %r, amount %s", payment.id, payment.status, amount)
        raise ProviderUnavailable("The payment service gave an answer we could not read. Please try again.")
    return payment


def _rejected(response: Answer, what: str) -> ProviderRejected:
    # The provider's error object: {"type": "error", "code": ..., "description": ..., "parameter": ...}
    log.error("provider refused %s: HTTP %d %s", what, response.status_code, response.text[:500])
    return ProviderRejected(
        "The payment service refused this payment. Please ask the staff for help.",
        provider_status=response.status_code,
    )


async def payment_create(
    *, shop_id: str, order_id: str, amount_kopecks: int, description: str, return_url: str
) -> ProviderPayment:
    """Create (or, for the same order, find again) the order's payment; redirect confirmation."""
    body = {
        "amount": {"value": rubles(amount_kopecks), "currency": CURRENCY},
        # One-stage payment: the money is captured as soon as the customer confirms.
        "capture": True,
        "confirmation": {"type": "redirect", "return_url": return_url},
        "description": description[:DESCRIPTION_MAX],
        "metadata": {"order_id": order_id},
    }
    response = await _request(
        "POST", "/payments", shop_id=shop_id, retries=settings.PAYMENT_PROVIDER_RETRIES,
        body=body, key=idempotence_key(order_id),
    )
    if response.status_code != 200:
        raise _rejected(response, f"payment for order {order_id!r}")
    payment = _payment(response)
    # Only a payment still waiting for the customer has a page to send them to.
    if payment.status == "pending" and not payment.confirmation_url:
        log.error("provider payment %s for order %r has no confirmation URL", payment.id, order_id)
        raise ProviderUnavailable("The payment service gave an answer we could not read. Please try again.")
    return payment


async def payment_get(*, shop_id: str, payment_id: str, retries: int | None = None) -> ProviderPayment | None:
    """The payment as the provider sees it now; None when the provider does not know it."""
    retries = settings.PAYMENT_PROVIDER_RETRIES if retries is None else retries
    response = await _request("GET", f"/payments/{payment_id}", shop_id=shop_id, retries=retries)
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise _rejected(response, f"reading payment {payment_id!r}")
    return _payment(response)


def notification_parse(body: bytes) -> Notification:
    """The notification's event and payment id; InvalidParameter names what is wrong."""
    try:
        data = json.loads(body)
    except ValueError:
        raise InvalidParameter("notification body is not JSON") from None
    except RecursionError:
        # The json module recurses once per nesting level: a few thousand "[" exhaust the stack.
        raise InvalidParameter("notification body is nested too deeply to be a notification") from None
    if not isinstance(data, dict) or data.get("type") != "notification":
        raise InvalidParameter("notification body has no \"type\": \"notification\"")
    event, payment = data.get("event"), data.get("object")
    if not isinstance(event, str) or not isinstance(payment, dict):
        raise InvalidParameter("notification has no \"event\" string and \"object\" object")
    payment_id = payment.get("id")
    # An identifier: it goes into the provider's URL and a database query (no NUL, no "/", no
    # lone surrogate from a "\ud800" escape).
    if not isinstance(payment_id, str) or not _IDENTIFIER.fullmatch(payment_id):
        # reprlib: bounded in length and depth, whatever the client sent.
        shown = reprlib.repr(payment_id)
        raise InvalidParameter(f"notification object.id={shown} is not a payment id (allowed: {IDENTIFIER_RULE})")
    metadata = payment.get("metadata")
    hint = metadata.get("order_id") if isinstance(metadata, dict) else None
    # The hint is only a lookup key: one that cannot be an order id finds nothing.
    hint = hint if isinstance(hint, str) and _IDENTIFIER.fullmatch(hint) else None
    return Notification(event=event, payment_id=payment_id, order_id_hint=hint)
