"""HTTP in, a service or selector call, HTTP out. Every view is async (coffee_payment.E002)."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.utils.translation import gettext as _
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_POST

from payments import events, provider, selectors, services
from payments.errors import (
    BadRequest, ContactInvalid, FormExpired, InvalidParameter, NotificationDeferred, OrderNotFound, PageNotFound,
    PaymentsError, ServerError,
)
from payments.forms import scan_parse
from payments.models import PAYABLE_STATUSES, EventCause, Order, OrderStatus
from payments.notification_limits import notification_sender_allowed
from payments.readiness import database_check, migrations_check

S = OrderStatus
# The status page's next step: each paragraph of payments/next_step.html and the statuses it is
# shown for ("expired": unpaid past its window). While the payment is being confirmed, and once
# the money is taken, it says what happens; once an order leads nowhere, what the customer can do.
NEXT_STEPS: dict[str, tuple[str, ...]] = {
    "confirming": (S.PENDING,),
    "making": (S.PAID, S.HELD, S.MAKE_PENDING),
    "not_charged": ("expired", S.NOT_PAID),
    # Two-stage: the hold is dropped, nothing was taken. Single-stage (or a hold captured after all): a refund.
    "released": (S.CANCEL_PENDING, S.RELEASED),
    "refunded": (S.REFUND_PENDING, S.REFUNDED),
    "again": ("expired", S.NOT_PAID, S.FAILED, S.MAKE_FAILED, S.CANCEL_PENDING, S.RELEASED, S.REFUND_PENDING,
              S.REFUNDED, S.REFUND_FAILED),
}


async def health(request: HttpRequest) -> JsonResponse:
    """Liveness: the worker's event loop answers. Touches no database."""
    return JsonResponse({"status": "ok"})


async def ready(request: HttpRequest) -> JsonResponse:
    """Readiness: the database answers within settings.READINESS_DATABASE_TIMEOUT, and has every
    migration applied."""
    timeout = settings.READINESS_DATABASE_TIMEOUT
    for check, name in ((database_check, "database"), (migrations_check, "migrations")):
        if (failure := await check(timeout=timeout)) is not None:
            # The check logged why, once: not Django's "Service Unavailable" line at every probe too.
            request.failure_logged = True  # type: ignore[attr-defined]
            return JsonResponse({"status": "unavailable", "checks": {name: failure}}, status=503)
    return JsonResponse({"status": "ready"})


def _error_page(request: HttpRequest, error: PaymentsError, *, order_id: str | None = None) -> HttpResponse:
    # "Back to your order" only where there is an order to go back to.
    back = order_id and not isinstance(error, OrderNotFound)
    context = {"error": error, "order_url": reverse("order-page", args=[order_id]) if back else None}
    return render(request, "payments/error.html", context, status=error.status)


# Django's own error pages, as customer pages in the request's language (handler404 and the others in
# coffee_payment/urls.py, CSRF_FAILURE_VIEW). Sync: Django calls them as it calls its defaults.
def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _error_page(request, PageNotFound(_("There is no such page here. Please scan the QR code on the coffee "
                                               "machine again.")))


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    # Mostly a Host this site does not serve; any other request Django finds suspicious alike.
    return _error_page(request, BadRequest(_("This link does not lead to this service. Please scan the QR code on "
                                             "the coffee machine again.")))


def server_error(request: HttpRequest) -> HttpResponse:
    return _error_page(request, ServerError(_("Please try again in a minute.")))


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """The Pay form without its cookie: back to the order, whose page brings a fresh form."""
    match = request.resolver_match
    order_id = match.kwargs.get("order_id") if match is not None else None
    return _error_page(request, FormExpired(_("This page was open too long, or the browser blocks cookies. Please "
                                              "open your order again, allow cookies for this site and press Pay.")),
                       order_id=order_id)


# The status page's Pay button: not for a payment already with the provider (the order page, a
# new scan, still leads back to it).
STATUS_PAGE_PAYABLE = frozenset({S.CREATED})


async def _order_page(request: HttpRequest, template: str, order: Order, *,
                      payable_statuses: frozenset[str] = PAYABLE_STATUSES, http_status: int = 200,
                      **extra: object) -> HttpResponse:
    expired = order.is_expired(timezone.now())
    context = {
        "order": order,
        "device": order.device,
        "texts": await selectors.device_texts_get(device=order.device),
        "payable": order.status in payable_statuses and not expired,
        "expired": expired,
        "expired_label": _("Expired: please order again on the machine"),
        "shown_status": "expired" if expired else order.status,
        "next_steps": {name: [str(status) for status in statuses] for name, statuses in NEXT_STEPS.items()},
        "payable_statuses": sorted(str(status) for status in payable_statuses),
        "status_url": reverse("order-status", args=[order.pk]),
        **extra,
    }
    return render(request, template, context, status=http_status)


@require_GET
@events.request_caused(EventCause.CUSTOMER)
async def scan(request: HttpRequest) -> HttpResponse:
    """GET /v1/pay?deviceUuid=&orderId=&drinkNo=&size= : the QR code's page; name and price from the menu."""
    try:
        parameters = scan_parse(request.GET)
        order = await sync_to_async(services.order_create)(
            order_id=parameters.order_id,
            device_uuid=parameters.device_uuid,
            drink_number=parameters.drink_number,
            size=parameters.size,
            quoted_price_kopecks=parameters.quoted_price_kopecks,
        )
    except PaymentsError as error:
        return _error_page(request, error)
    return await _order_page(request, "payments/order.html", order)


@sensitive_post_parameters("contact")  # personal data: never in an error report
@require_POST
@events.request_caused(EventCause.CUSTOMER)
async def payment_start(request: HttpRequest, order_id: str) -> HttpResponse:
    """POST /v1/orders/<id>/payment: create the provider payment, 303 to its confirmation page.
    With a receipt, the form carries the customer's `contact`; a bad one gets the order page again."""
    # Sent to the provider under the order's fixed Idempotence-Key: it must not depend on the
    # request (Host, X-Forwarded-Proto), or a second attempt would be "the same key, another body".
    status_page = settings.PUBLIC_BASE_URL + reverse("order-page", args=[order_id])
    try:
        confirmation_url = await services.order_payment_start(
            order_id=order_id, return_url=status_page, contact=request.POST.get("contact"))
    except ContactInvalid as error:
        try:
            order = await selectors.order_get(order_id=order_id)
        except PaymentsError as gone:
            return _error_page(request, gone)
        return await _order_page(request, "payments/order.html", order, http_status=error.status,
                                 contact_error=error.message)
    except PaymentsError as error:
        return _error_page(request, error, order_id=order_id)
    # 303: the browser follows with a GET, and a reload does not post the form again.
    response = HttpResponseRedirect(confirmation_url or status_page)
    response.status_code = 303
    return response


@csrf_exempt  # the provider cannot send a CSRF token; the body is never trusted anyway
@require_POST
async def payment_webhook(request: HttpRequest) -> JsonResponse:
    """POST /v1/payments/webhook: re-read the notified payment from the provider and apply it.

    400 for a body that is not a notification; 403 from a sender not in
    PAYMENT_PROVIDER_NOTIFICATION_ADDRESSES; 429 (with Retry-After) or 503 when the provider cannot
    be asked right now, so that it sends the notification again later.
    """
    if not notification_sender_allowed(request.META.get("REMOTE_ADDR")):
        return JsonResponse({"error": "notifications are not accepted from this address"}, status=403)
    try:
        notification = provider.notification_parse(request.body)
        refund = f" refund {notification.refund_id}" if notification.refund_id else ""
        with events.caused_by(EventCause.NOTIFICATION, f"{notification.event} {notification.payment_id}{refund}"):
            outcome = await services.payment_notification_apply(notification=notification)
    except InvalidParameter as error:
        return JsonResponse({"error": error.message}, status=400)
    except NotificationDeferred as deferred:
        return JsonResponse({"error": deferred.message}, status=429, headers={"Retry-After": str(deferred.retry_after)})
    except PaymentsError as error:
        return JsonResponse({"error": error.message}, status=503)
    return JsonResponse({"status": outcome})


@require_GET
async def order_status(request: HttpRequest, order_id: str) -> JsonResponse:
    """GET /v1/order-status/<id>: the hot path, polled by every open status page. A pending order's
    poll may re-read its payment from the provider first (services.order_payment_recheck)."""
    state = await selectors.order_get_status(order_id=order_id)
    now = timezone.now()
    if state is not None and selectors.payment_recheck_due(status=state.status, checked_at=state.provider_checked_at,
                                                           now=now):
        # The cause only when there may be a write: the poll's read stays as lean as it was.
        with events.caused_by(EventCause.STATUS_POLL, events.request_id()):
            rechecked = await services.order_payment_recheck(order_id=order_id, now=now)
        if rechecked:
            state = await selectors.order_get_status(order_id=order_id)
    if state is None:
        response = JsonResponse({"error": f"no order {order_id[:64]!r}"}, status=404)
    else:
        response = JsonResponse(state.as_json(now=now))
    response["Cache-Control"] = "no-store"
    return response


@require_GET
async def order_page(request: HttpRequest, order_id: str) -> HttpResponse:
    """GET /v1/orders/<id>: the status page, where the provider sends the customer back (so a
    pending order re-reads its payment first, as its poll does); its script polls order_status."""
    try:
        order = await selectors.order_get(order_id=order_id)
        now = timezone.now()
        if selectors.payment_recheck_due(status=order.status, checked_at=order.provider_checked_at, now=now):
            with events.caused_by(EventCause.CUSTOMER, events.request_id()):
                rechecked = await services.order_payment_recheck(order_id=order_id, now=now)
            if rechecked:
                order = await selectors.order_get(order_id=order_id)
    except PaymentsError as error:
        return _error_page(request, error)
    return await _order_page(request, "payments/status.html", order, payable_statuses=STATUS_PAGE_PAYABLE)
