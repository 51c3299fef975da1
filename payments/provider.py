"""The payment provider's REST protocol (YooKassa API v3), spoken with one aiohttp session per worker.

Payments (one stage, or a hold to capture or cancel), refunds, and reads: the only source of a
payment's status. Every write sends an Idempotence-Key derived from the order and the operation, and
the same body for the same order; timeouts, refused connections, 202, 429 and 5xx are retried a
bounded number of times under the same key (docs/payments.md, "The provider" and "Money flows").
A call made while serving a request carries its X-Request-ID; each attempt is timed and its
failures counted (payments/metrics.py).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import re
import time
import urllib.parse
import uuid
import weakref
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
from django.conf import settings
from django.utils.translation import gettext as _, gettext_lazy
from django.utils.module_loading import import_string

from payments.errors import InvalidParameter, ProviderRejected, ProviderUnavailable, ShopNotConfigured
from payments.json_input import json_input_parse
from payments.metrics import PROVIDER_DURATION, PROVIDER_ERRORS
from payments.models import IDENTIFIER
from payments.personal_data import personal_data_scrub

log = logging.getLogger(__name__)

# Payment statuses of API v3; notifications name the same ones as `payment.<status>`.
PAYMENT_STATUSES = frozenset({"pending", "waiting_for_capture", "succeeded", "canceled"})
REFUND_STATUSES = frozenset({"pending", "succeeded", "canceled"})
# receipt_registration: the receipt's delivery to the cash register (54-FZ).
RECEIPT_STATUSES = frozenset({"pending", "succeeded", "canceled"})
# The provider has no holds for SBP: an SBP payment is created with capture: true.
SBP = "sbp"
CURRENCY = "RUB"
# Provider limit on the payment description.
DESCRIPTION_MAX = 128
# Fixed namespace: the key of an order must be the same in every process and after every restart.
IDEMPOTENCE_NAMESPACE = uuid.UUID("6f1d7c1e-5b7a-4d3c-9f3e-2b8c1a9e0d41")
# Before retry n the client waits settings.PAYMENT_PROVIDER_RETRY_BACKOFF * n seconds: short, the
# customer is waiting. An attempt needs at least this many seconds before its deadline to be made.
ATTEMPT_MIN_SECONDS = 0.1
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
    # A held payment (waiting_for_capture) is released by the provider at this time.
    expires_at: datetime.datetime | None = None
    # Refunded so far (a succeeded payment), and when the provider created the payment.
    refunded_kopecks: int = 0
    created_at: datetime.datetime | None = None
    # The API's `test`: a test shop's payment, no real money. Absent counts as real.
    test: bool = False
    # payment_method.type once known ("bank_card", "sbp"); receipt_registration of a payment with a receipt.
    method_type: str | None = None
    receipt_registration: str | None = None


@dataclass(frozen=True)
class ProviderRefund:
    id: str
    payment_id: str
    status: str
    amount_kopecks: int
    currency: str
    receipt_registration: str | None = None


@dataclass(frozen=True)
class Notification:
    event: str
    payment_id: str
    # Untrusted: used only to find the order when the payment id is not stored yet.
    order_id_hint: str | None
    # refund.* notifications: the refund to re-read (payment_id is the refund's payment).
    refund_id: str | None = None


# The operations on an order's money, each under a key of its own.
OPERATIONS = ("payment", "capture", "cancel", "refund")


def idempotence_key(order_id: str, operation: str = "payment") -> str:
    """The key of one operation on an order's money: every attempt of it sends the same.

    The payment's key is the order's own (uuid5 of the order id, as before operations had keys):
    orders created before stay payable under the key the provider already knows.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"operation {operation!r} is not one of {', '.join(OPERATIONS)}")
    name = order_id if operation == "payment" else f"{order_id}/{operation}"
    return str(uuid.uuid5(IDEMPOTENCE_NAMESPACE, name))


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
# time: a call costs about a third of httpx2's CPU (docs/benchmarks.md).
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
        raise ShopNotConfigured(_("Payments for this coffee machine are not set up yet. Please tell the staff."))
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


def _failure_kind(exc: BaseException) -> str:
    return next((name for cls, name in _FAILURE_KINDS if isinstance(exc, cls)), type(exc).__name__)


def _failure(exc: BaseException) -> str:
    kind = _failure_kind(exc)
    return f"{kind}: {exc}" if str(exc) else kind


def _request_id() -> str | None:
    """The X-Request-ID of the request being served (settings.REQUEST_ID_CALLABLE), None outside one.

    Sent to the provider, so its logs and ours can be matched; read through a setting because this
    app does not import the project package.
    """
    return import_string(settings.REQUEST_ID_CALLABLE)()


def _request_deadline() -> float | None:
    """When the request being served is answered 504 (settings.REQUEST_DEADLINE_CALLABLE, in
    time.monotonic()), None outside one."""
    return import_string(settings.REQUEST_DEADLINE_CALLABLE)()


def _ends(deadline: float | None) -> float | None:
    """When a call must be over: at `deadline`, and PAYMENT_PROVIDER_DEADLINE_MARGIN before the
    request's deadline (the request still writes its outcome and answers), whichever is first."""
    request = _request_deadline()
    if request is not None:
        request -= settings.PAYMENT_PROVIDER_DEADLINE_MARGIN
    ends = [moment for moment in (deadline, request) if moment is not None]
    return min(ends) if ends else None


def _attempt_timeout(*, connect: float, read: float, left: float | None) -> aiohttp.ClientTimeout:
    """connect: waiting for a pooled connection and opening one; sock_read: each wait for the
    answer; total: the whole attempt, when a deadline leaves only `left` seconds."""
    if left is None:
        return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=read)
    return aiohttp.ClientTimeout(total=left, connect=min(connect, left), sock_connect=min(connect, left),
                                 sock_read=min(read, left))


async def _request(
    method: str,
    path: str,
    *,
    operation: str,
    shop_id: str,
    retries: int,
    body: dict[str, Any] | None = None,
    key: str | None = None,
    deadline: float | None = None,
) -> Answer:
    """One API call with bounded retries; a response below 500 (other than 202/429) is returned.

    `operation` names the call in the metrics (the path has ids in it). The call, retries and
    back-off included, is over by `_ends(deadline)`: each attempt's timeouts are cut to the time
    left, and an attempt that would get less than ATTEMPT_MIN_SECONDS is not made.
    """
    headers = {"Authorization": _auth(shop_id)}
    if key:
        headers["Idempotence-Key"] = key
    request_id = _request_id()
    if request_id:
        headers["X-Request-ID"] = request_id
    url = f"{settings.PAYMENT_PROVIDER_URL}{path}"
    connect, read = settings.PAYMENT_PROVIDER_CONNECT_TIMEOUT, settings.PAYMENT_PROVIDER_READ_TIMEOUT
    ends = _ends(deadline)
    failure = ""
    for attempt in range(retries + 1):
        backoff = settings.PAYMENT_PROVIDER_RETRY_BACKOFF * attempt
        if ends is not None and ends - time.monotonic() - backoff < ATTEMPT_MIN_SECONDS:
            log.warning("provider %s %s: no attempt %d/%d, %.2f s left before the deadline", method, path,
                        attempt + 1, retries + 1, max(ends - time.monotonic(), 0))
            failure = "; ".join(filter(None, (failure, "no time left before the deadline")))
            break
        if backoff:
            await asyncio.sleep(backoff)
        timeout = _attempt_timeout(connect=connect, read=read, left=None if ends is None else ends - time.monotonic())
        started = time.perf_counter()
        try:
            async with _client().request(method, url, json=body, headers=headers, timeout=timeout) as response:
                answer = Answer(response.status, await response.read())
        except _TRANSPORT_ERRORS as exc:
            PROVIDER_DURATION.labels(operation, "error").observe(time.perf_counter() - started)
            PROVIDER_ERRORS.labels(operation, _failure_kind(exc)).inc()
            failure = _failure(exc)
        else:
            PROVIDER_DURATION.labels(operation, f"{answer.status_code // 100}xx").observe(time.perf_counter() - started)
            if answer.status_code < 500 and answer.status_code not in RETRY_STATUSES:
                return answer
            PROVIDER_ERRORS.labels(operation, f"http_{answer.status_code}").inc()
            failure = f"HTTP {answer.status_code}"
        log.warning("provider %s %s attempt %d/%d failed: %s", method, path, attempt + 1, retries + 1, failure)
    raise ProviderUnavailable(_("The payment service did not answer. Please try again in a moment."), detail=failure)


_UNREADABLE = gettext_lazy("The payment service gave an answer we could not read. Please try again.")
_PARSE_ERRORS = (ValueError, KeyError, TypeError, AttributeError, InvalidOperation)


def _timestamp(value: Any) -> datetime.datetime | None:
    """An ISO 8601 time of the API ("2026-11-30T05:00:00.000Z"), always with its zone."""
    if value is None:
        return None
    moment = datetime.datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        raise ValueError(f"time {value!r} has no zone")
    return moment


def _kopecks(amount: Any) -> tuple[int, str]:
    value = Decimal(amount["value"])
    if value * 100 != int(value * 100) or value < 0:
        raise ValueError(f"amount {value} is not whole kopecks")
    return int(value * 100), str(amount["currency"])


def _receipt_registration(data: dict[str, Any]) -> str | None:
    """The receipt's registration status; an unknown one is logged, not a reason to refuse the object."""
    status = data.get("receipt_registration")
    if status is not None and status not in RECEIPT_STATUSES:
        log.warning("provider %s %s has receipt_registration %r", data.get("type", "object"), data.get("id"),
                    str(status)[:32])
        return None
    return status


def _payment(response: Answer, data: Any = None) -> ProviderPayment:
    """The payment of an answer, or `data` (one item of a list answer)."""
    try:
        data = response.json() if data is None else data
        amount_kopecks, currency = _kopecks(data["amount"])
        metadata = data.get("metadata") or {}
        confirmation = data.get("confirmation") or {}
        refunded = data.get("refunded_amount")
        method = (data.get("payment_method") or {}).get("type")
        payment = ProviderPayment(
            id=str(data["id"]),
            status=str(data["status"]),
            amount_kopecks=amount_kopecks,
            currency=currency,
            order_id=metadata.get("order_id"),
            confirmation_url=confirmation.get("confirmation_url"),
            expires_at=_timestamp(data.get("expires_at")),
            refunded_kopecks=_kopecks(refunded)[0] if refunded else 0,
            created_at=_timestamp(data.get("created_at")),
            test=data.get("test") is True,
            method_type=str(method)[:32] if method else None,
            receipt_registration=_receipt_registration(data),
        )
    except _PARSE_ERRORS as exc:
        log.error("provider answered HTTP %d with an unreadable payment: %r", response.status_code, exc)
        raise ProviderUnavailable(_UNREADABLE) from None
    if payment.status not in PAYMENT_STATUSES:
        log.error("provider payment %s has status %r", payment.id, payment.status)
        raise ProviderUnavailable(_UNREADABLE)
    return payment


def _refund(response: Answer) -> ProviderRefund:
    try:
        data = response.json()
        amount_kopecks, currency = _kopecks(data["amount"])
        refund = ProviderRefund(
            id=str(data["id"]), payment_id=str(data["payment_id"]), status=str(data["status"]),
            amount_kopecks=amount_kopecks, currency=currency, receipt_registration=_receipt_registration(data),
        )
    except _PARSE_ERRORS as exc:
        log.error("provider answered HTTP %d with an unreadable refund: %r", response.status_code, exc)
        raise ProviderUnavailable(_UNREADABLE) from None
    if refund.status not in REFUND_STATUSES:
        log.error("provider refund %s has status %r", refund.id, refund.status)
        raise ProviderUnavailable(_UNREADABLE)
    return refund


def _rejected(response: Answer, what: str) -> ProviderRejected:
    # The provider's error object: {"type": "error", "code": ..., "description": ..., "parameter": ...}
    # Scrubbed: a refusal of a receipt may quote the customer's contact (the log filter cuts its length).
    log.error("provider refused %s: HTTP %d %s", what, response.status_code, personal_data_scrub(response.text))
    return ProviderRejected(
        _("The payment service refused this payment. Please ask the staff for help."),
        provider_status=response.status_code,
    )


async def payment_create(
    *, shop_id: str, order_id: str, amount_kopecks: int, description: str, return_url: str, capture: bool = True,
    receipt: dict[str, Any] | None = None, method_type: str | None = None,
) -> ProviderPayment:
    """Create (or, for the same order, find again) the order's payment; redirect confirmation.

    capture=True: single-stage, the money is taken as soon as the customer confirms. False:
    two-stage, the provider holds it (waiting_for_capture) until payment_capture or payment_cancel.
    `receipt`: the fiscal receipt (payments.receipts); `method_type`: the only method the provider's
    page offers (payment_method_data), else the shop's.
    """
    if method_type == SBP and not capture:
        raise ValueError("an SBP payment cannot be held: it needs capture=True")
    body: dict[str, Any] = {
        "amount": {"value": rubles(amount_kopecks), "currency": CURRENCY},
        "capture": capture,
        "confirmation": {"type": "redirect", "return_url": return_url},
        "description": description[:DESCRIPTION_MAX],
        "metadata": {"order_id": order_id},
    }
    if receipt is not None:
        body["receipt"] = receipt
    if method_type is not None:
        body["payment_method_data"] = {"type": method_type}
    response = await _request(
        "POST", "/payments", operation="payment_create", shop_id=shop_id, retries=settings.PAYMENT_PROVIDER_RETRIES,
        body=body, key=idempotence_key(order_id),
    )
    if response.status_code != 200:
        raise _rejected(response, f"payment for order {order_id!r}")
    payment = _payment(response)
    # Only a payment still waiting for the customer has a page to send them to.
    if payment.status == "pending" and not payment.confirmation_url:
        log.error("provider payment %s for order %r has no confirmation URL", payment.id, order_id)
        raise ProviderUnavailable(_UNREADABLE)
    return payment


async def _payment_write(*, shop_id: str, order_id: str, payment_id: str, operation: str, body: dict[str, Any],
                         key: str | None = None) -> ProviderPayment:
    response = await _request(
        "POST", f"/payments/{payment_id}/{operation}", operation=f"payment_{operation}", shop_id=shop_id,
        retries=settings.PAYMENT_PROVIDER_RETRIES,
        body=body, key=key or idempotence_key(order_id, operation),
    )
    if response.status_code != 200:
        raise _rejected(response, f"{operation} of payment {payment_id!r} (order {order_id!r})")
    return _payment(response)


async def payment_capture(
    *, shop_id: str, order_id: str, payment_id: str, amount_kopecks: int, receipt: dict[str, Any] | None = None
) -> ProviderPayment:
    """Take the held amount: waiting_for_capture -> succeeded. Capturing less than was held needs
    the `receipt` of what is taken; the whole amount needs none (the payment's stands)."""
    body: dict[str, Any] = {"amount": {"value": rubles(amount_kopecks), "currency": CURRENCY}}
    if receipt is not None:
        body["receipt"] = receipt
    return await _payment_write(shop_id=shop_id, order_id=order_id, payment_id=payment_id, operation="capture", body=body)


async def payment_cancel(*, shop_id: str, order_id: str, payment_id: str, key: str | None = None) -> ProviderPayment:
    """Release the held amount: waiting_for_capture -> canceled. `key`: another operation's
    Idempotence-Key than the order's own cancel (an orphan payment's, payment_idempotence_key)."""
    return await _payment_write(shop_id=shop_id, order_id=order_id, payment_id=payment_id, operation="cancel", body={},
                                key=key)


async def refund_create(
    *, shop_id: str, order_id: str, payment_id: str, amount_kopecks: int, description: str,
    receipt: dict[str, Any] | None = None, key: str | None = None,
) -> ProviderRefund:
    """Return a succeeded payment's money; the same order gets the same refund on every attempt
    (`key`: another refund's Idempotence-Key, as for payment_cancel). A partial refund of a payment
    with a receipt needs the `receipt` of what is returned; a full one needs none (the provider
    builds the refund receipt from the payment's)."""
    body: dict[str, Any] = {
        "payment_id": payment_id,
        "amount": {"value": rubles(amount_kopecks), "currency": CURRENCY},
        "description": description[:DESCRIPTION_MAX],
    }
    if receipt is not None:
        body["receipt"] = receipt
    response = await _request(
        "POST", "/refunds", operation="refund_create", shop_id=shop_id, retries=settings.PAYMENT_PROVIDER_RETRIES,
        body=body, key=key or idempotence_key(order_id, "refund"),
    )
    if response.status_code != 200:
        raise _rejected(response, f"refund of payment {payment_id!r} (order {order_id!r})")
    return _refund(response)


async def _object_get(*, shop_id: str, kind: str, object_id: str, retries: int | None,
                      deadline: float | None = None) -> Answer | None:
    """GET /<kind>s/<id>: the provider's answer, or None when it does not know the object."""
    retries = settings.PAYMENT_PROVIDER_RETRIES if retries is None else retries
    response = await _request("GET", f"/{kind}s/{object_id}", operation=f"{kind}_get", shop_id=shop_id, retries=retries,
                              deadline=deadline)
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise _rejected(response, f"reading {kind} {object_id!r}")
    return response


async def refund_get(*, shop_id: str, refund_id: str, retries: int | None = None) -> ProviderRefund | None:
    """The refund as the provider sees it now; None when the provider does not know it."""
    response = await _object_get(shop_id=shop_id, kind="refund", object_id=refund_id, retries=retries)
    return None if response is None else _refund(response)


async def payment_get(*, shop_id: str, payment_id: str, retries: int | None = None,
                      deadline: float | None = None) -> ProviderPayment | None:
    """The payment as the provider sees it now; None when the provider does not know it. Over by
    `deadline` (time.monotonic()) if given."""
    response = await _object_get(shop_id=shop_id, kind="payment", object_id=payment_id, retries=retries,
                                 deadline=deadline)
    return None if response is None else _payment(response)


# A list page holds at most this many payments (API v3's largest `limit`).
LIST_LIMIT = 100


def _api_time(moment: datetime.datetime) -> str:
    """2026-11-30T05:00:00.000Z: the form the API prints and filters on."""
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def payment_list(
    *, shop_id: str, created_from: datetime.datetime, created_before: datetime.datetime, cursor: str | None = None
) -> tuple[list[ProviderPayment], str | None]:
    """One page of the shop's payments created in [created_from, created_before), newest first,
    and the cursor of the next page (None after the last)."""
    query = {"created_at.gte": _api_time(created_from), "created_at.lt": _api_time(created_before),
             "limit": str(LIST_LIMIT), **({"cursor": cursor} if cursor else {})}
    response = await _request("GET", f"/payments?{urllib.parse.urlencode(query)}", operation="payment_list",
                              shop_id=shop_id, retries=settings.PAYMENT_PROVIDER_RETRIES)
    if response.status_code != 200:
        raise _rejected(response, f"the payments list of shop {shop_id!r}")
    try:
        data = response.json()
        items, next_cursor = list(data["items"]), data.get("next_cursor")
        if next_cursor is not None and not isinstance(next_cursor, str):
            raise TypeError(f"next_cursor {next_cursor!r} is not a string")
    except _PARSE_ERRORS as exc:
        log.error("provider answered HTTP %d with an unreadable payments list: %r", response.status_code, exc)
        raise ProviderUnavailable(_UNREADABLE) from None
    return [_payment(response, item) for item in items], next_cursor or None


def payment_idempotence_key(payment_id: str, operation: str) -> str:
    """The key of an operation on a payment that its order does not take (reconciliation returns
    it): derived from the payment, since its order's own keys are its own payment's."""
    if operation not in ("cancel", "refund"):
        raise ValueError(f"operation {operation!r} is not one of cancel, refund")
    return str(uuid.uuid5(IDEMPOTENCE_NAMESPACE, f"payment/{payment_id}/{operation}"))


# Provider ids (UUIDs at YooKassa) go into the path of the re-read: a forged `../payments` or a lone
# surrogate must not reach the URL or the database.
_PROVIDER_ID = re.compile(IDENTIFIER)


def _provider_id(value: Any, where: str, *, what: str) -> str:
    if not isinstance(value, str) or not _PROVIDER_ID.fullmatch(value):
        raise InvalidParameter(f"notification {where}={value!r:.80} is not a {what} id")
    return value


def notification_parse(body: bytes) -> Notification:
    """The notification's event and payment (and refund) id; InvalidParameter names what is wrong."""
    data = json_input_parse(body, what="notification body")
    if not isinstance(data, dict) or data.get("type") != "notification":
        raise InvalidParameter("notification body has no \"type\": \"notification\"")
    event, payment = data.get("event"), data.get("object")
    if not isinstance(event, str) or not isinstance(payment, dict):
        raise InvalidParameter("notification has no \"event\" string and \"object\" object")
    if event.startswith("refund."):
        # The object is the refund; it names its payment.
        refund_id = _provider_id(payment.get("id"), "object.id", what="refund")
        payment_id = _provider_id(payment.get("payment_id"), "object.payment_id", what="payment")
        return Notification(event=event, payment_id=payment_id, order_id_hint=None, refund_id=refund_id)
    payment_id = _provider_id(payment.get("id"), "object.id", what="payment")
    metadata = payment.get("metadata")
    hint = metadata.get("order_id") if isinstance(metadata, dict) else None
    # Only a hint: one that is no order id names no order (another system's payment in the shop).
    usable = isinstance(hint, str) and _PROVIDER_ID.fullmatch(hint)
    return Notification(event=event, payment_id=payment_id, order_id_hint=hint if usable else None)
