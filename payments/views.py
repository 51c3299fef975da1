"""HTTP in, a service or selector call, HTTP out. Every view is async (see payments.checks)."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from payments import provider, selectors, services
from payments.errors import InvalidParameter, NotificationDeferred, OrderNotFound, PaymentsError
from payments.forms import scan_parse
from payments.models import PAYABLE_STATUSES, Order, OrderStatus
from payments.notification_limits import notification_sender_allowed
from payments.readiness import database_check, migrations_check

S = OrderStatus
# The status page's next step once an order leads nowhere: each paragraph of
# payments/next_step.html and the statuses it is shown for ("expired": unpaid past its window).
NEXT_STEPS: dict[str, tuple[str, ...]] = {
    "not_charged": ("expired", S.NOT_PAID),
    "money_back": (S.CANCEL_PENDING, S.RELEASED, S.REFUND_PENDING, S.REFUNDED),
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
    failure = await database_check(timeout=timeout)
    if failure is not None:
        return JsonResponse({"status": "unavailable", "checks": {"database": failure}}, status=503)
    failure = await migrations_check(timeout=timeout)
    if failure is not None:
        return JsonResponse({"status": "unavailable", "checks": {"migrations": failure}}, status=503)
    return JsonResponse({"status": "ready"})


def _error_page(request: HttpRequest, error: PaymentsError, *, order_id: str | None = None) -> HttpResponse:
    # "Back to your order" only where there is an order to go back to.
    back = order_id and not isinstance(error, OrderNotFound)
    context = {"error": error, "order_url": reverse("order-page", args=[order_id]) if back else None}
    return render(request, "payments/error.html", context, status=error.status)


def _order_page(request: HttpRequest, template: str, order: Order) -> HttpResponse:
    # As the status poll says it (selectors.OrderState.as_json), so that its answers agree with the page.
    expired = order.status == S.CREATED and timezone.now() >= order.expires_at
    context = {
        "order": order,
        "device": order.device,
        "payable": order.status in PAYABLE_STATUSES and not expired,
        "expired": expired,
        "expired_label": _("Expired: please order again on the machine"),
        "shown_status": "expired" if expired else order.status,
        "next_steps": {name: [str(status) for status in statuses] for name, statuses in NEXT_STEPS.items()},
        "payable_statuses": [str(status) for status in PAYABLE_STATUSES],
        "status_url": reverse("order-status", args=[order.pk]),
    }
    return render(request, template, context)


@require_GET
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
    return _order_page(request, "payments/order.html", order)


@require_POST
async def payment_start(request: HttpRequest, order_id: str) -> HttpResponse:
    """POST /v1/orders/<id>/payment: create the provider payment, 303 to its confirmation page."""
    # Sent to the provider under the order's fixed Idempotence-Key: it must not depend on the
    # request (Host, X-Forwarded-Proto), or a second attempt would be "the same key, another body".
    status_page = settings.PUBLIC_BASE_URL + reverse("order-page", args=[order_id])
    try:
        confirmation_url = await services.order_payment_start(order_id=order_id, return_url=status_page)
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
    """GET /v1/order-status/<id>: the hot path, polled by every open status page."""
    state = await selectors.order_get_status(order_id=order_id)
    if state is None:
        response = JsonResponse({"error": f"no order {order_id[:64]!r}"}, status=404)
    else:
        response = JsonResponse(state.as_json(now=timezone.now()))
    response["Cache-Control"] = "no-store"
    return response


@require_GET
async def order_page(request: HttpRequest, order_id: str) -> HttpResponse:
    """GET /v1/orders/<id>: the status page; its script polls order_status."""
    try:
        order = await selectors.order_get(order_id=order_id)
    except PaymentsError as error:
        return _error_page(request, error)
    return _order_page(request, "payments/status.html", order)
