"""A fake payment provider on a loopback port: the YooKassa API v3 subset this server speaks.

    python -m devtools.fake_provider --port 8001 --webhook-url http://127.0.0.1:8000/v1/payments/webhook

Its calls, idempotence, errors, receipts, SBP, confirmation page and notifications: docs/payments.md,
"The fake provider"; its options: docs/development.md, "Make targets"; faults switched while it runs:
`POST /control` (devtools/fake_provider_faults.py). Plain ASGI, no Django: tests also run it
in-process and reach into `FakeProvider` to change a payment's status or stop notifications.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import datetime
import html
import itertools
import json
import logging
import random
import re
import urllib.parse
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import aiohttp

from coffee_payment.asgi_types import Receive, Scope, Send
from coffee_payment.lifespan import lifespan_serve
from devtools.fake_provider_faults import REPEAT_AFTER, ControlError, NotificationFaults, control_parse

log = logging.getLogger("devtools.fake_provider")

# --fail: what each mode does to the API calls (shown by --help).
FAIL_MODES = {
    "none": "serve every call (the default)",
    "error": "500 to every API call",
    "hang": "500 after --hang-seconds",
    "flaky": "500 to each call's first attempt, its retry (same Idempotence-Key) served",
    "429": "429 too_many_requests (Retry-After: 1) to every API call",
}
API_PREFIX = "/v3"
# Bounds: a notification gets one short attempt; a request body is small JSON or a form.
NOTIFY_TIMEOUT = 5.0
MAX_BODY = 64 * 1024
_AMOUNT = re.compile(r"[0-9]{1,8}\.[0-9]{2}")
_ID = r"([A-Za-z0-9-]{1,64})"
KOPECK = Decimal("0.01")
# The fake's fee: income_amount is the amount less 3.5 % (rounded to kopecks), as a card fee would be.
COMMISSION = Decimal("0.035")
# A bank-card hold lasts 7 days at the real provider; --hold-seconds shortens it for tests.
HOLD_SECONDS = 7 * 24 * 3600
# A paid payment's receipt is registered, and an SBP refund arrives, this long after (on the next read).
RECEIPT_SECONDS = 2.0
SBP_REFUND_SECONDS = 2.0
# API v3 limits: metadata has at most 16 keys of up to 32 characters, values up to 512.
METADATA_KEYS, METADATA_KEY_LENGTH, METADATA_VALUE_LENGTH = 16, 32, 512
# Lists: `limit` 1..100, 10 when absent.
LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX = 10, 100
PAYMENT_STATUSES = ("pending", "waiting_for_capture", "succeeded", "canceled")
REFUND_STATUSES = ("pending", "succeeded", "canceled")
# The payment methods the fake offers: a test card, and SBP (no holds: single-stage only).
METHOD, SBP = "bank_card", "sbp"
METHODS = (METHOD, SBP)
CARD = {"first6": "555555", "last4": "4444", "expiry_year": "2030", "expiry_month": "12",
        "card_type": "MasterCard", "issuer_country": "RU"}
SBP_PAYER_BANK = {"bank_id": "100000000111", "bic": "044525225"}
METHOD_TITLES = {METHOD: "Pay", SBP: "Pay with SBP"}
# Receipts (54-FZ), as the API v3 reference allows them.
RECEIPT_ITEMS_MAX = 100
RECEIPT_DESCRIPTION_MAX = 128
VAT_CODES = range(1, 13)
TAX_SYSTEM_CODES = range(1, 7)
PAYMENT_SUBJECTS = frozenset({"commodity", "excise", "job", "service", "gambling_bet", "gambling_prize", "lottery",
                              "lottery_prize", "intellectual_activity", "payment", "agent_commission", "composite",
                              "another"})
PAYMENT_MODES = frozenset({"full_prepayment", "partial_prepayment", "advance", "full_payment", "partial_payment",
                           "credit", "credit_payment"})
MEASURES = frozenset({"piece", "gram", "kilogram", "ton", "centimeter", "decimeter", "meter", "square_centimeter",
                      "square_decimeter", "square_meter", "milliliter", "liter", "cubic_meter", "kilowatt_hour",
                      "gigacalorie", "day", "hour", "minute", "second", "kilobyte", "megabyte", "gigabyte",
                      "terabyte", "another"})
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
_PHONE = re.compile(r"[0-9]{7,15}")  # E.164 digits, no "+"
_QUANTITY = re.compile(r"[0-9]{1,6}(\.[0-9]{1,3})?")



class ApiError(Exception):
    def __init__(self, status: int, code: str, description: str, parameter: str | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.body = {"type": "error", "id": str(uuid.uuid4()), "code": code, "description": description}
        if parameter:
            self.body["parameter"] = parameter


def _invalid(description: str, parameter: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request", description, parameter)


def _now() -> datetime.datetime:
    # Milliseconds, as the API prints them: a time read from a response filters exactly.
    now = datetime.datetime.now(datetime.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _iso(moment: datetime.datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _money(value: Decimal, currency: str) -> dict[str, str]:
    return {"value": f"{value:.2f}", "currency": currency}


@dataclass
class FakePayment:
    id: str
    seq: int
    shop_id: str
    amount: Decimal
    currency: str
    description: str
    metadata: dict[str, Any]
    return_url: str
    confirmation_url: str
    capture: bool = False
    # The method named at creation (payment_method_data); the one the customer paid with.
    method: str | None = None
    method_used: str | None = None
    # receipt_registration of a payment created with a receipt: pending, then succeeded once paid.
    receipt_status: str | None = None
    status: str = "pending"
    created_at: datetime.datetime = field(default_factory=_now)
    captured_at: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None
    cancellation: dict[str, str] | None = None
    refunded: Decimal = Decimal("0.00")
    # False: the provider never sends this payment's notifications (nor its refunds').
    notifies: bool = True
    # A test shop's payment (the API's `test`): no real money moves.
    test: bool = True

    @property
    def paid(self) -> bool:
        return self.status in ("waiting_for_capture", "succeeded")

    @property
    def refundable_left(self) -> Decimal:
        return self.amount - self.refunded if self.status == "succeeded" else Decimal("0.00")

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "paid": self.paid,
            "amount": _money(self.amount, self.currency),
            "created_at": _iso(self.created_at),
            "metadata": self.metadata,
            "recipient": {"account_id": self.shop_id, "gateway_id": "fake"},
            "refundable": self.refundable_left > 0,
            "test": self.test,
        }
        if self.description:
            data["description"] = self.description
        if self.paid:
            fee = (self.amount * COMMISSION).quantize(KOPECK, rounding=ROUND_HALF_UP)
            data["income_amount"] = _money(self.amount - fee, self.currency)
        if self.method or self.method_used:
            method: dict[str, Any] = {"type": self.method_used or self.method, "id": self.id, "saved": False}
            if self.method_used == METHOD:
                method.update(title=f"Bank card *{CARD['last4']}", card=CARD)
            elif self.method_used == SBP:
                method.update(sbp_operation_id=f"A{self.seq:031d}", payer_bank_details=SBP_PAYER_BANK)
            data["payment_method"] = method
        if self.receipt_status:
            data["receipt_registration"] = self.receipt_status
        if self.status == "pending":
            data["confirmation"] = {"type": "redirect", "confirmation_url": self.confirmation_url,
                                    "return_url": self.return_url}
        if self.captured_at:
            data["captured_at"] = _iso(self.captured_at)
        if self.status == "waiting_for_capture" and self.expires_at:
            data["expires_at"] = _iso(self.expires_at)
        if self.cancellation:
            data["cancellation_details"] = self.cancellation
        if self.refunded:
            data["refunded_amount"] = _money(self.refunded, self.currency)
        return data


@dataclass
class FakeRefund:
    id: str
    seq: int
    shop_id: str
    payment_id: str
    amount: Decimal
    currency: str
    description: str
    metadata: dict[str, Any] | None
    status: str = "succeeded"
    created_at: datetime.datetime = field(default_factory=_now)
    # An SBP payment's refund goes back through SBP: pending at first, succeeded later.
    method: str | None = None
    receipt_status: str | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "payment_id": self.payment_id,
            "status": self.status,
            "amount": _money(self.amount, self.currency),
            "created_at": _iso(self.created_at),
        }
        if self.description:
            data["description"] = self.description
        if self.metadata is not None:
            data["metadata"] = self.metadata
        if self.method == SBP:
            data["refund_method"] = {"type": SBP, "sbp_operation_id": f"R{self.seq:031d}"}
        if self.receipt_status:
            data["receipt_registration"] = self.receipt_status
        return data


def _notification(event: str, obj: FakePayment | FakeRefund) -> dict[str, Any]:
    return {"type": "notification", "event": event, "object": obj.as_json()}


class FakeProvider:
    """The ASGI app. State lives in memory; one instance is one provider."""

    def __init__(
        self,
        *,
        credentials: Mapping[str, str] | None = None,
        latency: float = 0.0,
        fail: str = "none",
        hang_seconds: float = 30.0,
        hold_seconds: float = HOLD_SECONDS,
        receipt_seconds: float = RECEIPT_SECONDS,
        sbp_refund_seconds: float = SBP_REFUND_SECONDS,
        webhook_url: str | None = None,
        notify: bool = True,
        lost_notifications: float = 0.0,
        create_delay: float = 0.0,
    ) -> None:
        self.credentials = dict(credentials or {})
        self.latency, self.fail, self.hang_seconds = latency, fail, hang_seconds
        self.hold_seconds = hold_seconds
        self.receipt_seconds, self.sbp_refund_seconds = receipt_seconds, sbp_refund_seconds
        self.webhook_url = webhook_url
        # notify False: no notification at all; else each new payment's are lost with this chance.
        self.notify, self.lost_notifications = notify, lost_notifications
        # Seconds a payment creation answers after the payment exists: a client that dies meanwhile
        # leaves a payment it never heard of.
        self.create_delay = create_delay
        self._client: aiohttp.ClientSession | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.reset()

    def reset(self) -> None:
        """Forget every payment, refund and call (tests share one running fake)."""
        self.payments: dict[str, FakePayment] = {}
        self.refunds: dict[str, FakeRefund] = {}
        self.keys: dict[tuple[str, str], tuple[str, str]] = {}  # (shop, key) -> (body, object id)
        self.key_routes: dict[tuple[str, str], str] = {}  # (shop, key) -> "POST /payments/<id>/capture"
        self.calls: Counter[str] = Counter()  # "POST /payments", "GET /payments/<id>"
        # Shops that take real money: their payments say `test: false`.
        self.live_shops: set[str] = set()
        # (call, X-Request-ID or None) of the latest calls: which request of the server made each.
        self.request_ids: deque[tuple[str, str | None]] = deque(maxlen=1000)
        self.notifications: list[dict[str, Any]] = []
        self.lost: list[dict[str, Any]] = []  # notifications not sent (notify off, a lost payment's, a fault's)
        self._attempts: Counter[str] = Counter()
        self._seq = itertools.count(1)
        self._losing = random.Random(0)  # which payments lose their notifications: the same every run
        # POST /control's notification faults; the notifications they hold back (reorder); what they
        # did ("lost", "repeated", "delayed", "reordered"); the webhook's answers (status or error).
        self.notification_faults = NotificationFaults()
        self._chance = random.Random(0)
        self._held: list[dict[str, Any]] = []
        self.faulted: Counter[str] = Counter()
        self.webhook_answers: Counter[str] = Counter()

    # Test helpers ------------------------------------------------------------------------------

    def settle(self, payment_id: str, status: str) -> dict[str, Any]:
        """Move a pending payment to succeeded/waiting_for_capture/canceled, as the customer would.

        Returns the notification the provider would send (not sent: the test posts it). A test
        expires a hold by setting the payment's `expires_at` to the past: the next read cancels it.
        """
        if status not in ("succeeded", "waiting_for_capture", "canceled"):
            raise ValueError(f"cannot settle a payment as {status!r}")
        payment = self.payments[payment_id]
        if payment.status == "pending":
            if status == "canceled":
                self._cancel(payment, party="yoo_money", reason="expired_on_confirmation")
            else:
                self._pay(payment, capture=status == "succeeded")
        return _notification(f"payment.{payment.status}", payment)

    # State changes: each one synchronous, so no other request sees half of it. -----------------

    def _pay(self, payment: FakePayment, *, capture: bool, method: str = METHOD) -> None:
        payment.method_used = payment.method or method
        if capture:
            payment.status, payment.captured_at = "succeeded", _now()
        else:
            payment.status = "waiting_for_capture"
            payment.expires_at = _now() + datetime.timedelta(seconds=self.hold_seconds)

    def _cancel(self, payment: FakePayment, *, party: str, reason: str) -> None:
        payment.status, payment.expires_at = "canceled", None
        payment.cancellation = {"party": party, "reason": reason}
        if payment.receipt_status == "pending":  # nothing was paid: no receipt
            payment.receipt_status = "canceled"

    def _current(self, payment: FakePayment) -> FakePayment:
        """The payment now: a hold past its expires_at is canceled, as the real provider does, and a
        paid payment's receipt registered after receipt_seconds."""
        if payment.status == "waiting_for_capture" and payment.expires_at and _now() >= payment.expires_at:
            self._cancel(payment, party="yoo_money", reason="expired_on_capture")
            self._notify_later("payment.canceled", payment)
        if payment.receipt_status == "pending" and payment.captured_at and _now() >= payment.captured_at + \
                datetime.timedelta(seconds=self.receipt_seconds):
            payment.receipt_status = "succeeded"
        return payment

    def _refund_current(self, refund: FakeRefund) -> FakeRefund:
        """The refund now: an SBP refund succeeds after sbp_refund_seconds, its receipt after receipt_seconds."""
        age = (_now() - refund.created_at).total_seconds()
        if refund.status == "pending" and age >= self.sbp_refund_seconds:
            refund.status = "succeeded"
            self._notify_later("refund.succeeded", refund)
        if refund.receipt_status == "pending" and refund.status == "succeeded" and age >= self.receipt_seconds:
            refund.receipt_status = "succeeded"
        return refund

    def _expire_later(self, payment: FakePayment) -> None:
        """Cancel the hold when it expires, whether or not anyone reads it, and notify then."""

        def expire() -> None:
            if self.payments.get(payment.id) is payment:  # not forgotten by reset()
                self._current(payment)

        # A hair late: expires_at is on the millisecond grid, the timer is not.
        asyncio.get_running_loop().call_later(self.hold_seconds + 0.01, expire)

    # ASGI --------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan_serve(receive, send, on_shutdown=(self.aclose,))
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
            elif path == "/control" and method in ("GET", "POST"):
                if method == "POST":
                    self.control(body)
                await _respond(send, 200, json.dumps(self.control_state()).encode(), "application/json")
            else:
                raise ApiError(404, "not_found", f"no route {path}")
        except ApiError as error:
            retry_after = [(b"retry-after", b"1")] if error.status == 429 else []
            await _respond(send, error.status, json.dumps(error.body).encode(), "application/json", headers=retry_after)

    async def aclose(self) -> None:
        if self._sending:
            await asyncio.wait(self._sending, timeout=NOTIFY_TIMEOUT)
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _api(self, scope: Scope, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        shop_id = self._authenticate(headers.get("authorization", ""))
        key = headers.get("idempotence-key", "")
        query = scope.get("query_string", b"").decode("latin-1")
        call = f"{method} {path}"
        self.calls[call] += 1
        self.request_ids.append((call, headers.get("x-request-id")))
        await asyncio.sleep(self.latency)
        await self._maybe_fail(f"{call}?{query} {key}")
        if method == "GET":
            return 200, self._read(shop_id, path, query)
        if method != "POST":
            raise ApiError(404, "not_found", f"no API route {call}")
        if path == "/payments":
            created = self._once(shop_id, key, call, body, lambda: self._create(
                shop_id, body, base_url=_base_url(scope, headers)))
            await asyncio.sleep(self.create_delay)
            return 200, created
        if path == "/refunds":
            return 200, self._once(shop_id, key, call, body, lambda: self._refund(shop_id, body))
        match = re.fullmatch(rf"/payments/{_ID}/(capture|cancel)", path)
        if match is None:
            raise ApiError(404, "not_found", f"no API route {call}")
        payment = self._payment(shop_id, match.group(1))
        act = self._capture if match.group(2) == "capture" else self._cancel_by_merchant
        return 200, self._once(shop_id, key, call, body, lambda: act(payment, body))

    def _read(self, shop_id: str, path: str, query: str) -> dict[str, Any]:
        if path == "/payments":
            return _list(self._owned(self.payments.values(), shop_id), query, PAYMENT_LIST_FILTERS)
        if path == "/refunds":
            return _list(self._owned(self.refunds.values(), shop_id), query, REFUND_LIST_FILTERS)
        if match := re.fullmatch(rf"/payments/{_ID}", path):
            return self._payment(shop_id, match.group(1)).as_json()
        if match := re.fullmatch(rf"/refunds/{_ID}", path):
            refund = self.refunds.get(match.group(1))
            if refund is None or refund.shop_id != shop_id:
                raise ApiError(404, "not_found", "refund not found", "refund_id")
            return self._refund_current(refund).as_json()
        raise ApiError(404, "not_found", f"no API route GET {path}")

    def _owned(self, objects: Iterable[FakePayment | FakeRefund], shop_id: str) -> list[tuple[int, dict[str, Any]]]:
        """The shop's objects, newest first: (sequence number, JSON)."""
        mine = [self._current(o) if isinstance(o, FakePayment) else self._refund_current(o)
                for o in objects if o.shop_id == shop_id]
        return [(o.seq, o.as_json()) for o in sorted(mine, key=lambda o: o.seq, reverse=True)]

    def _payment(self, shop_id: str, payment_id: str) -> FakePayment:
        payment = self.payments.get(payment_id)
        if payment is None or payment.shop_id != shop_id:
            raise ApiError(404, "not_found", "payment not found", "payment_id")
        return self._current(payment)

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
        if self.fail == "429":
            raise ApiError(429, "too_many_requests", "fake provider: --fail 429")

    def _once(self, shop_id: str, key: str, call: str, body: bytes,
              act: Callable[[], FakePayment | FakeRefund]) -> dict[str, Any]:
        """Idempotence: a key's first request acts; a repeat answers its object as it is now."""
        if not 1 <= len(key) <= 64:
            raise _invalid("Idempotence-Key header is required", "Idempotence-Key")
        text = body.decode(errors="replace")
        seen = self.keys.get((shop_id, key))
        if seen is not None:
            if seen[0] != text or self.key_routes[(shop_id, key)] != call:
                raise _invalid("Idempotence-Key reused with another request", "Idempotence-Key")
            if call == "POST /refunds":
                return self._refund_current(self.refunds[seen[1]]).as_json()
            return self._current(self.payments[seen[1]]).as_json()
        done = act()
        self.keys[(shop_id, key)] = (text, done.id)
        self.key_routes[(shop_id, key)] = call
        return done.as_json()

    def _create(self, shop_id: str, body: bytes, *, base_url: str) -> FakePayment:
        data = _payment_request(body)
        payment_id = str(uuid.uuid4())
        amount, currency = _amount(data.get("amount"), "amount")
        payment = FakePayment(
            id=payment_id,
            seq=next(self._seq),
            shop_id=shop_id,
            amount=amount,
            currency=currency,
            description=data.get("description", ""),
            metadata=data.get("metadata") or {},
            return_url=data["confirmation"]["return_url"],
            confirmation_url=f"{base_url}/confirm/{payment_id}",
            capture=data.get("capture", False),
            notifies=self._losing.random() >= self.lost_notifications,
            test=shop_id not in self.live_shops,
            method=(data.get("payment_method_data") or {}).get("type"),
            receipt_status="pending" if "receipt" in data else None,
        )
        self.payments[payment_id] = payment
        return payment

    def _capture(self, payment: FakePayment, body: bytes) -> FakePayment:
        data = _json_object(body, empty_ok=True)
        if payment.status != "waiting_for_capture":
            raise _invalid(f"payment is {payment.status}: only a waiting_for_capture payment can be captured")
        amount = payment.amount
        if "amount" in data:
            amount, currency = _amount(data["amount"], "amount")
            if currency != payment.currency:
                raise _invalid(f"amount.currency must be the payment's {payment.currency}", "amount.currency")
            if amount > payment.amount:
                raise _invalid(f"amount.value is more than the {payment.amount} held", "amount.value")
        # Capturing less than the receipt says needs the receipt of what is taken.
        _receipt_for_part(data, amount=amount, whole=payment.amount, with_receipt=payment.receipt_status is not None)
        payment.amount = amount
        payment.status, payment.captured_at, payment.expires_at = "succeeded", _now(), None
        self._notify_later("payment.succeeded", payment)
        return payment

    def _cancel_by_merchant(self, payment: FakePayment, body: bytes) -> FakePayment:
        _json_object(body, empty_ok=True)
        if payment.status not in ("pending", "waiting_for_capture"):
            raise _invalid(f"payment is {payment.status}: only a pending or waiting_for_capture payment can be canceled")
        self._cancel(payment, party="merchant", reason="canceled_by_merchant")
        self._notify_later("payment.canceled", payment)
        return payment

    def _refund(self, shop_id: str, body: bytes) -> FakeRefund:
        data = _json_object(body)
        payment_id = data.get("payment_id")
        payment = self.payments.get(payment_id) if isinstance(payment_id, str) else None
        if payment is None or payment.shop_id != shop_id:
            raise _invalid("payment_id names no payment of this shop", "payment_id")
        self._current(payment)
        amount, currency = _amount(data.get("amount"), "amount")
        description = data.get("description", "")
        if not isinstance(description, str) or len(description) > 250:
            raise _invalid("description must be a string of up to 250 characters", "description")
        metadata = _metadata(data["metadata"]) if "metadata" in data else None
        if payment.status != "succeeded":
            raise _invalid(f"payment is {payment.status}: only a succeeded payment can be refunded", "payment_id")
        if currency != payment.currency:
            raise _invalid(f"amount.currency must be the payment's {payment.currency}", "amount.currency")
        if amount > payment.refundable_left:
            raise _invalid(f"amount.value is more than the {payment.refundable_left} left to refund", "amount.value")
        with_receipt = payment.receipt_status is not None or "receipt" in data
        _receipt_for_part(data, amount=amount, whole=payment.amount, with_receipt=payment.receipt_status is not None)
        sbp = payment.method_used == SBP
        refund = FakeRefund(id=str(uuid.uuid4()), seq=next(self._seq), shop_id=shop_id, payment_id=payment.id,
                            amount=amount, currency=currency, description=description, metadata=metadata,
                            status="pending" if sbp else "succeeded", method=SBP if sbp else None,
                            receipt_status="pending" if with_receipt else None)
        payment.refunded += amount
        self.refunds[refund.id] = refund
        if sbp:  # the bank confirms it later: notified then, read or not
            asyncio.get_running_loop().call_later(self.sbp_refund_seconds + 0.01, self._refund_settle_later, refund)
        else:
            self._notify_later("refund.succeeded", refund)
        return refund

    def _refund_settle_later(self, refund: FakeRefund) -> None:
        if self.refunds.get(refund.id) is refund:  # not forgotten by reset()
            self._refund_current(refund)

    async def _confirm(self, send: Send, method: str, payment_id: str, body: bytes) -> None:
        payment = self.payments.get(payment_id)
        if payment is None:
            raise ApiError(404, "not_found", "payment not found")
        self._current(payment)
        if method == "GET":
            await _respond(send, 200, _confirmation_page(payment).encode(), "text/html; charset=utf-8")
            return
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        action = form.get("action", [""])[0]
        if method != "POST" or action not in ("succeed", "cancel"):
            raise _invalid("POST action=succeed or action=cancel", "action")
        offered = _methods_offered(payment)
        paid_with = form.get("method", [offered[0]])[0]
        if paid_with not in offered:
            raise _invalid(f"method must be one of {', '.join(offered)}", "method")
        if payment.status == "pending":  # a settled payment stays settled
            if action == "succeed":
                self._pay(payment, capture=payment.capture, method=paid_with)
                if payment.status == "waiting_for_capture":
                    self._expire_later(payment)
            else:
                self._cancel(payment, party="yoo_money", reason="expired_on_confirmation")
            # The customer's browser waits for the notification: back on the shop, it is applied.
            await self._notify(f"payment.{payment.status}", payment)
        await _respond(send, 303, b"", "text/plain", location=payment.return_url)

    # Notifications -----------------------------------------------------------------------------

    def _sends(self, notification: dict[str, Any], obj: FakePayment | FakeRefund) -> bool:
        """Whether `notification` about `obj` goes out; one that does not is kept in `lost`."""
        payment = obj if isinstance(obj, FakePayment) else self.payments.get(obj.payment_id)
        lost_by_fault = self._chance.random() < self.notification_faults.lose
        if self.notify and (payment is None or payment.notifies) and not lost_by_fault:
            self.notifications.append(notification)
            return True
        self.faulted["lost"] += lost_by_fault
        self.lost.append(notification)
        log.info("notification %s of %s not sent (lost)", notification["event"], obj.id)
        return False

    def _notify_later(self, event: str, obj: FakePayment | FakeRefund) -> None:
        """Notify without holding up the answer: the API call that caused it may hold a lock the
        webhook handler needs, and the real provider notifies asynchronously too."""
        notification = _notification(event, obj)
        if self._sends(notification, obj) and self.webhook_url and not self._deferred(notification):
            self._send_later(notification, 0.0)

    async def _notify(self, event: str, obj: FakePayment | FakeRefund) -> None:
        notification = _notification(event, obj)
        if self._sends(notification, obj) and not self._deferred(notification):
            await self._send(notification)

    def _deferred(self, notification: dict[str, Any]) -> bool:
        """Whether the notification faults take `notification` over (send it again later, hold it
        back, send it late); then it is not sent now."""
        faults = self.notification_faults
        if self._chance.random() < faults.repeat:
            self.faulted["repeated"] += 1
            self._send_later(notification, self._chance.uniform(*REPEAT_AFTER) + faults.delay)
        if faults.reorder:
            self.faulted["reordered"] += 1
            self._held.append(notification)
            return True
        if faults.delay:
            self.faulted["delayed"] += 1
            self._send_later(notification, self._chance.uniform(0, faults.delay))
            return True
        return False

    def _send_later(self, notification: dict[str, Any], delay: float) -> None:
        self._send_in_turn([notification], delay=delay)

    def _send_in_turn(self, notifications: list[dict[str, Any]], *, delay: float = 0.0) -> None:
        """Send `notifications` after `delay`, each once the webhook answered the one before: sent
        at once, they would reach it in any order."""
        async def send() -> None:
            await asyncio.sleep(delay)
            for notification in notifications:
                await self._send(notification)

        task = asyncio.get_running_loop().create_task(send())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def control(self, body: bytes) -> None:
        """POST /control: switch the faults the body names (devtools/fake_provider_faults.py).
        Switching reorder off sends what it held back, newest first."""
        try:
            changes = control_parse(body, fail_modes=tuple(FAIL_MODES))
        except ControlError as error:
            raise _invalid(str(error), error.key) from None
        if "seed" in changes:
            self._chance.seed(changes.pop("seed"))
        if (faults := changes.pop("notifications", None)) is not None:
            self.notification_faults = faults
            if not faults.reorder:
                held, self._held = self._held, []
                if held:
                    self._send_in_turn(held[::-1])
        for name, value in changes.items():
            setattr(self, name, value)
        log.info("control: fail %s, latency %g s, hang %g s, notifications %s", self.fail, self.latency,
                 self.hang_seconds, self.notification_faults.as_json())

    def control_state(self) -> dict[str, Any]:
        """GET /control: the faults now, the notifications held back or on their way, what the
        faults did, and the webhook's answers by status (or error)."""
        return {"fail": self.fail, "latency": self.latency, "hang_seconds": self.hang_seconds,
                "notifications": self.notification_faults.as_json(), "held": len(self._held),
                "sending": len(self._sending), "faulted": dict(self.faulted),
                "webhook_answers": dict(self.webhook_answers)}

    async def _send(self, notification: dict[str, Any]) -> None:
        if not self.webhook_url:
            return
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=NOTIFY_TIMEOUT))
        try:
            async with self._client.post(self.webhook_url, json=notification) as response:
                text = await response.text()
            self.webhook_answers[str(response.status)] += 1
            log.info("notified %s of %s: HTTP %d %s", self.webhook_url, notification["event"], response.status, text[:200])
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            # The real provider retries for a day; the fake tells whoever runs it.
            self.webhook_answers[type(exc).__name__] += 1
            log.warning("notification to %s failed: %s", self.webhook_url, exc)


# Request bodies ---------------------------------------------------------------------------------


def _json_object(body: bytes, *, empty_ok: bool = False) -> dict[str, Any]:
    if empty_ok and not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise _invalid("body is not JSON") from None
    if not isinstance(data, dict):
        raise _invalid("body is not a JSON object")
    return data


def _amount(amount: Any, parameter: str) -> tuple[Decimal, str]:
    if not isinstance(amount, dict) or not _AMOUNT.fullmatch(str(amount.get("value", ""))):
        raise _invalid(f"{parameter}.value must be a decimal string like 120.00", f"{parameter}.value")
    if amount.get("currency") != "RUB":
        raise _invalid(f"{parameter}.currency must be RUB", f"{parameter}.currency")
    value = Decimal(amount["value"])
    if value <= 0:
        raise _invalid(f"{parameter}.value must be more than 0", f"{parameter}.value")
    return value, "RUB"


def _metadata(metadata: Any) -> dict[str, Any]:
    if not isinstance(metadata, dict) or len(metadata) > METADATA_KEYS or any(
        not isinstance(k, str) or len(k) > METADATA_KEY_LENGTH or not isinstance(v, str) or len(v) > METADATA_VALUE_LENGTH
        for k, v in metadata.items()
    ):
        raise _invalid(f"metadata must map at most {METADATA_KEYS} keys of up to {METADATA_KEY_LENGTH} characters "
                       f"to strings of up to {METADATA_VALUE_LENGTH}", "metadata")
    return metadata


def _payment_request(body: bytes) -> dict[str, Any]:
    data = _json_object(body)
    _amount(data.get("amount"), "amount")
    confirmation = data.get("confirmation")
    if not isinstance(confirmation, dict) or confirmation.get("type") != "redirect" or not confirmation.get("return_url"):
        raise _invalid("confirmation must be a redirect with return_url", "confirmation")
    if not isinstance(data.get("description", ""), str) or len(data.get("description", "")) > 128:
        raise _invalid("description is longer than 128 characters", "description")
    if not isinstance(data.get("capture", False), bool):
        raise _invalid("capture must be true or false", "capture")
    if "metadata" in data and data["metadata"] is not None:
        _metadata(data["metadata"])
    _payment_method_check(data)
    if "receipt" in data:
        _receipt_check(data["receipt"], amount=_amount(data["amount"], "amount")[0])
    return data


def _payment_method_check(data: dict[str, Any]) -> None:
    """payment_method_data: one of the fake's methods; SBP has no holds, so it needs capture: true."""
    method = data.get("payment_method_data")
    if method is None:
        return
    if not isinstance(method, dict) or method.get("type") not in METHODS:
        raise _invalid(f"payment_method_data.type must be one of {', '.join(METHODS)} (the methods the fake offers)",
                       "payment_method_data.type")
    if method["type"] == SBP and data.get("capture") is not True:
        raise _invalid("sbp payments cannot be held: capture must be true", "capture")


def _methods_offered(payment: FakePayment) -> tuple[str, ...]:
    """What the confirmation page lets the customer pay with: the method the payment named, else
    every method that can do what it asks (a hold: not SBP)."""
    if payment.method:
        return (payment.method,)
    return METHODS if payment.capture else (METHOD,)


def _receipt_check(receipt: Any, *, amount: Decimal, parameter: str = "receipt") -> None:
    """A receipt as the API takes it (54-FZ): a customer to send it to, lines with allowed values,
    lines that add up to `amount` exactly. A refusal names the parameter, never a customer's contact."""
    if not isinstance(receipt, dict):
        raise _invalid("receipt must be an object", parameter)
    customer = receipt.get("customer")
    if not isinstance(customer, dict) or not (customer.get("email") or customer.get("phone")):
        raise _invalid("receipt.customer needs an email or a phone to send the receipt to", f"{parameter}.customer")
    if "email" in customer and not (isinstance(customer["email"], str) and _EMAIL.fullmatch(customer["email"])):
        raise _invalid("receipt.customer.email is not an e-mail address", f"{parameter}.customer.email")
    if "phone" in customer and not (isinstance(customer["phone"], str) and _PHONE.fullmatch(customer["phone"])):
        raise _invalid("receipt.customer.phone is not a phone number in ITU-T E.164 (digits only)",
                       f"{parameter}.customer.phone")
    if "tax_system_code" in receipt and (type(receipt["tax_system_code"]) is not int
                                         or receipt["tax_system_code"] not in TAX_SYSTEM_CODES):
        raise _invalid("receipt.tax_system_code must be 1..6", f"{parameter}.tax_system_code")
    items = receipt.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= RECEIPT_ITEMS_MAX:
        raise _invalid(f"receipt.items must list 1..{RECEIPT_ITEMS_MAX} items", f"{parameter}.items")
    total = Decimal("0")
    for index, item in enumerate(items):
        total += _receipt_item_check(item, f"{parameter}.items[{index}]")
    if total != amount:
        raise _invalid(f"the receipt's items add up to {total:.2f}, not the amount {amount:.2f}", f"{parameter}.items")


def _receipt_item_check(item: Any, where: str) -> Decimal:
    """One receipt line; what it costs (amount × quantity)."""
    if not isinstance(item, dict):
        raise _invalid(f"{where} must be an object", where)
    description = item.get("description")
    if not isinstance(description, str) or not 1 <= len(description) <= RECEIPT_DESCRIPTION_MAX:
        raise _invalid(f"{where}.description must be 1..{RECEIPT_DESCRIPTION_MAX} characters", f"{where}.description")
    quantity = item.get("quantity")
    if isinstance(quantity, bool) or not _QUANTITY.fullmatch(str(quantity)) or Decimal(str(quantity)) <= 0:
        raise _invalid(f"{where}.quantity must be a number above 0 with up to 3 decimals", f"{where}.quantity")
    price, _ = _amount(item.get("amount"), f"{where}.amount")
    vat_code = item.get("vat_code")
    if type(vat_code) is not int or vat_code not in VAT_CODES:
        raise _invalid(f"{where}.vat_code must be 1..12", f"{where}.vat_code")
    for name, allowed in (("payment_subject", PAYMENT_SUBJECTS), ("payment_mode", PAYMENT_MODES), ("measure", MEASURES)):
        if name in item and item[name] not in allowed:
            raise _invalid(f"{where}.{name} is not one of the API's values", f"{where}.{name}")
    return price * Decimal(str(quantity))


def _receipt_for_part(data: dict[str, Any], *, amount: Decimal, whole: Decimal, with_receipt: bool) -> None:
    """A capture or refund of part of a payment with a receipt carries the receipt of that part; of
    the whole, none is needed (the payment's receipt stands, or is returned whole)."""
    if "receipt" in data:
        _receipt_check(data["receipt"], amount=amount)
    elif with_receipt and amount != whole:
        raise _invalid("a part of a payment with a receipt needs the receipt of that part", "receipt")


# Lists ------------------------------------------------------------------------------------------

_COMPARISONS = {"gte": lambda a, b: a >= b, "gt": lambda a, b: a > b, "lte": lambda a, b: a <= b, "lt": lambda a, b: a < b}
_TIMES = {f"{name}.{op}" for name in ("created_at", "captured_at") for op in _COMPARISONS}
PAYMENT_LIST_FILTERS = frozenset(_TIMES | {"status", "payment_method", "limit", "cursor"})
REFUND_LIST_FILTERS = frozenset({t for t in _TIMES if t.startswith("created_at")} | {"status", "payment_id", "limit", "cursor"})


def _list(items: list[tuple[int, dict[str, Any]]], query: str, allowed: frozenset[str]) -> dict[str, Any]:
    """One page of `items` ((sequence number, JSON), newest first) under the API v3 list filters."""
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise _invalid("query string is malformed") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            raise _invalid(f"unknown list parameter {name!r}; allowed: {', '.join(sorted(allowed))}", name)
        if name in params:
            raise _invalid(f"{name} is given more than once", name)
        params[name] = value
    statuses = PAYMENT_STATUSES if "payment_method" in allowed else REFUND_STATUSES
    if "status" in params and params["status"] not in statuses:
        raise _invalid(f"status must be one of {', '.join(statuses)}", "status")
    limit = params.get("limit", str(LIST_LIMIT_DEFAULT))
    if not limit.isdigit() or not 1 <= int(limit) <= LIST_LIMIT_MAX:
        raise _invalid(f"limit must be a whole number 1..{LIST_LIMIT_MAX}", "limit")
    after = _cursor_seq(params["cursor"]) if "cursor" in params else None
    checks = [(name.split(".")[0], _COMPARISONS[name.split(".")[1]], _moment(value, name))
              for name, value in params.items() if name in _TIMES]
    chosen = []
    for seq, item in items:
        if after is not None and seq >= after:
            continue
        if any(name in params and item.get(name) != params[name] for name in ("status", "payment_id")):
            continue
        if "payment_method" in params and item.get("payment_method", {}).get("type") != params["payment_method"]:
            continue
        if not all(item.get(f) is not None and test(_moment(item[f], f), moment) for f, test, moment in checks):
            continue
        chosen.append((seq, item))
    page = chosen[: int(limit)]
    answer: dict[str, Any] = {"type": "list", "items": [item for _, item in page]}
    if len(chosen) > len(page):
        answer["next_cursor"] = base64.urlsafe_b64encode(str(page[-1][0]).encode()).decode()
    return answer


def _cursor_seq(cursor: str) -> int:
    try:
        return int(base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii"), 10)
    except (ValueError, binascii.Error, UnicodeError):
        raise _invalid("cursor is not a next_cursor this API gave", "cursor") from None


def _moment(text: str, parameter: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise _invalid(f"{parameter} must be an ISO 8601 time with a zone, like 2026-11-30T05:00:00.000Z", parameter)
    return moment


# Pages and plumbing -----------------------------------------------------------------------------


def _base_url(scope: Scope, headers: Mapping[str, str]) -> str:
    host = headers.get("host") or "{}:{}".format(*scope["server"])
    return f"{scope.get('scheme', 'http')}://{host}"


def _confirmation_page(payment: FakePayment) -> str:
    amount = html.escape(f"{payment.amount:.2f} {payment.currency}")
    if payment.status != "pending":
        buttons = f"<p>This payment is {html.escape(payment.status)}.</p>"
    else:
        # A Pay button per method the customer may choose (the card's first).
        buttons = "".join(
            f'<form method="post"><input type="hidden" name="method" value="{method}">'
            f'<button name="action" value="succeed">{METHOD_TITLES[method]}</button></form>'
            for method in _methods_offered(payment)
        ) + '<form method="post"><button name="action" value="cancel">Cancel</button></form>'

    hold = "" if payment.capture else "<p>Two-stage: paying puts a hold on the card until the shop captures it.</p>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'><title>Fake provider</title></head><body>"
        f"<h1>Fake payment provider</h1><p>{html.escape(payment.description)}</p><p>{amount}</p>{hold}"
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


async def _respond(send: Send, status: int, body: bytes, content_type: str, *, location: str | None = None,
                   headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    sent = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *headers]
    if location:
        sent.append((b"location", location.encode()))
    await send({"type": "http.response.start", "status": status, "headers": sent})
    await send({"type": "http.response.body", "body": body})


def _credentials(text: str) -> dict[str, str]:
    pairs = [entry.split(":", 1) for entry in text.split(",") if entry.strip()]
    if any(len(pair) != 2 or not pair[0].strip() or not pair[1].strip() for pair in pairs):
        raise argparse.ArgumentTypeError("expected shop_id:secret[,shop_id:secret...]")
    return {shop.strip(): secret.strip() for shop, secret in pairs}


def _seconds_up_to(high: float, low: float = 0.0) -> Callable[[str], float]:
    def parse(text: str) -> float:
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", text) or not low <= float(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (allowed: {low:g}..{high:g})")
        return float(text)
    return parse


_seconds = _seconds_up_to(3600)


def _share(text: str) -> float:
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", text) or not 0 <= float(text) <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share (allowed: 0..1, e.g. 0.2)")
    return float(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (allowed: 1..65535)")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.fake_provider", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=8001)
    parser.add_argument("--latency", type=_seconds, default=0.0, help="seconds added to every API answer")
    parser.add_argument("--fail", choices=tuple(FAIL_MODES), default="none",
                        help="; ".join(f"{mode}: {effect}" for mode, effect in FAIL_MODES.items()))
    parser.add_argument("--hang-seconds", type=_seconds, default=30.0, help="how long --fail hang waits (default 30)")
    parser.add_argument("--hold-seconds", type=_seconds_up_to(HOLD_SECONDS, 1), default=float(HOLD_SECONDS),
                        help="how long a capture: false payment stays waiting_for_capture (default 7 days)")
    parser.add_argument("--receipt-seconds", type=_seconds, default=RECEIPT_SECONDS,
                        help="how long after the payment (or refund) its receipt is registered")
    parser.add_argument("--sbp-refund-seconds", type=_seconds, default=SBP_REFUND_SECONDS,
                        help="how long an SBP refund stays pending")
    parser.add_argument("--webhook-url", help="where to POST notifications, e.g. http://127.0.0.1:8000/v1/payments/webhook")
    parser.add_argument("--no-notify", action="store_true", help="send no notification at all")
    parser.add_argument("--lost-notifications", type=_share, default=0.0,
                        help="share of payments (0..1) whose notifications are never sent")
    parser.add_argument("--create-delay", type=_seconds, default=0.0,
                        help="seconds a payment creation answers after the payment exists")
    parser.add_argument("--credentials", type=_credentials, default={},
                        help="shop_id:secret,... to accept (default: any non-empty secret)")
    args = parser.parse_args(argv)
    app = FakeProvider(credentials=args.credentials, latency=args.latency, fail=args.fail,
                       hang_seconds=args.hang_seconds, hold_seconds=args.hold_seconds, webhook_url=args.webhook_url,
                       notify=not args.no_notify, lost_notifications=args.lost_notifications,
                       create_delay=args.create_delay, receipt_seconds=args.receipt_seconds,
                       sbp_refund_seconds=args.sbp_refund_seconds)
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s fake-provider %(levelname)s %(message)s")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", lifespan="on")


if __name__ == "__main__":
    main()
