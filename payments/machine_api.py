"""The machine API: JSON for the coffee machines, each authenticated by its own bearer token.

A machine reads its orders (paid? for what?), reports what became of the drink, and uploads its
menu. Token auth, not cookies, so no CSRF; another machine's order answers 404, as if it did not
exist. Every authenticated call marks the machine seen (payments.liveness). Every view is async
(coffee_payment.E002).
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from payments import credentials, events, liveness, selectors, services
from payments.errors import IllegalTransition, InvalidParameter, MakeWindowClosed
from payments.forms import menu_parse
from payments.json_input import json_input_parse
from payments.models import REPORTED_STATUSES, EventCause
from payments.selectors import OrderState

# What a machine may report, each the service of the same name. Made and failed move the money at
# once (capture a hold; refund or release), not at the next reconciliation.
REPORT_SERVICES: dict[str, Callable[..., Awaitable[Any]]] = {
    "make_pending": sync_to_async(services.order_mark_make_pending),
    "successful": services.aorder_mark_successful,
    "make_failed": services.aorder_mark_make_failed,
}
OUTCOMES = tuple(REPORT_SERVICES)
REALM = 'Bearer realm="coffee-machine"'

MachineView = Callable[..., Awaitable[JsonResponse]]


def _json(data: dict[str, Any], *, status: int = 200) -> JsonResponse:
    response = JsonResponse(data, status=status)
    response["Cache-Control"] = "no-store"
    return response


def _unauthorized(message: str, *, invalid: bool) -> JsonResponse:
    response = _json({"error": message}, status=401)
    # RFC 6750: no credential gets the bare challenge; a wrong one says so.
    response["WWW-Authenticate"] = f'{REALM}, error="invalid_token"' if invalid else REALM
    return response


async def _authenticated(request: HttpRequest, *, order_id: str | None
                         ) -> tuple[int, str, OrderState | None, datetime.datetime | None] | JsonResponse:
    """(id of the machine whose token the request carries, the token's key id, its order `order_id`
    or None, when it was last seen), or the 401 to answer. An order of that machine comes with its credential in one read
    (every machine polls); otherwise the credential alone says whether the token is good."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _unauthorized("this API needs the machine's token: Authorization: Bearer <token>", invalid=False)
    token = token.strip()
    key_id = credentials.token_key_id(token)
    if key_id and order_id is not None:
        with_order = await selectors.machine_order_find(key_id=key_id, order_id=order_id)
        if with_order is not None and credentials.token_matches(token, with_order[1]):
            return with_order[0], key_id, with_order[2], with_order[3]
    found = await selectors.device_credential_find(key_id=key_id) if key_id else None
    if found is None or not credentials.token_matches(token, found[1]):
        return _unauthorized("the machine's token is not valid (issue a new one in the admin)", invalid=True)
    return found[0], key_id, None, found[2]


def machine_endpoint(*methods: str) -> Callable[[MachineView], MachineView]:
    """Refuse other methods (405 in JSON, as every answer here), then authenticate the machine; the
    view gets its `device_id`, and a view of one order also that `order` (None: not this machine's)."""

    def decorate(view: MachineView) -> MachineView:
        @functools.wraps(view)
        async def authenticated(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            if request.method not in methods:
                allowed = ", ".join(methods)
                refused = _json({"error": f"method {str(request.method)[:16]} is not allowed (allowed: {allowed})"},
                                status=405)
                refused["Allow"] = allowed
                return refused
            order_id = kwargs.get("order_id")
            found = await _authenticated(request, order_id=order_id)
            if isinstance(found, JsonResponse):
                return found
            device_id, key_id, order, last_seen_at = found
            # Polls stay reads: the call is written down only when the stored one is stale.
            if liveness.seen_write_due(last_seen_at, now=timezone.now()):
                await sync_to_async(services.device_mark_seen)(device_id=device_id)
            if order_id is not None:
                kwargs["order"] = order
            # What the machine's call changes is the machine's, by its credential.
            with events.caused_by(EventCause.MACHINE, key_id):
                return await view(request, *args, device_id=device_id, **kwargs)

        return csrf_exempt(authenticated)

    return decorate


def _body(request: HttpRequest) -> bytes:
    try:
        return request.body
    except RequestDataTooBig:
        raise InvalidParameter("the body is too large") from None


def _no_order(order_id: str) -> JsonResponse:
    return _json({"error": f"no order {order_id[:64]!r} for this machine"}, status=404)


@machine_endpoint("GET")
async def machine_order(
    request: HttpRequest, order_id: str, *, device_id: int, order: OrderState | None
) -> JsonResponse:
    """GET /v1/machine/orders/<id>: status, drink and amount paid. One read (machine_endpoint's)."""
    if order is None:
        return _no_order(order_id)
    return _json(order.as_machine_json(now=timezone.now()))


def _outcome_parse(body: bytes) -> str:
    data = json_input_parse(body, what="the body")
    if not isinstance(data, dict) or set(data) != {"outcome"}:
        raise InvalidParameter('the body is not {"outcome": "..."}')
    if data["outcome"] not in OUTCOMES:
        raise InvalidParameter(f"outcome={str(data['outcome'])[:64]!r} is not one of {', '.join(OUTCOMES)}")
    return data["outcome"]


@machine_endpoint("POST")
async def machine_order_report(
    request: HttpRequest, order_id: str, *, device_id: int, order: OrderState | None
) -> JsonResponse:
    """POST /v1/machine/orders/<id>/report {"outcome": ...}: the drink is being made, made, or failed.

    The same report again answers 200 with the order as it is; a report the order's status does not
    allow answers 409 naming both.
    """
    try:
        outcome = _outcome_parse(_body(request))
    except InvalidParameter as error:
        return _json({"error": error.message}, status=400)
    if order is None:
        return _no_order(order_id)
    try:
        await REPORT_SERVICES[outcome](order_id=order_id)
    except IllegalTransition as refused:
        # The same report again finds the order where that report (and the money flow it started)
        # took it: harmless.
        if isinstance(refused, MakeWindowClosed) or refused.current not in REPORTED_STATUSES[outcome]:
            return _json({"error": refused.message, "reason": refused.reason, "status": refused.current,
                          "outcome": outcome}, status=409)
    # The order as the report left it: the authentication found it this machine's, and an order
    # never changes machine.
    state = await selectors.order_get_status(order_id=order_id)
    if state is None:  # deleted in between
        return _no_order(order_id)
    return _json(state.as_machine_json(now=timezone.now()))


@machine_endpoint("GET", "PUT")
async def machine_menu(request: HttpRequest, *, device_id: int) -> JsonResponse:
    """GET /v1/machine/menu: the machine's menu. PUT: replace it whole (validated, all or nothing)."""
    if request.method == "PUT":
        try:
            entries = menu_parse(_body(request))
        except InvalidParameter as error:
            return _json({"error": error.message}, status=400)
        await sync_to_async(services.device_menu_replace)(device_id=device_id, entries=entries)
    return _json({"items": await selectors.device_menu(device_id=device_id)})
