"""Admin pages. An order's status changes only through the services' transitions (the actions).

Every page is scoped to the staff user's merchants and shows times in the machine's zone
(payments/admin_mixins.py); the sales report is payments/admin_sales.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db import models, transaction
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.translation import gettext as _, gettext_lazy, ngettext

from payments import events, liveness, provider, services
from payments.admin_mixins import MachineTime, MerchantScoped, devices_of, machine_time_text, merchants_of
from payments.errors import IllegalTransition, PaymentsError, ProviderUnavailable, RecordsPermanent, RefundNotAllowed
from payments.forms import StaffRefundForm
from payments.models import (
    STAFF_REFUND_SOURCES, Device, DeviceText, EventCause, MenuItem, Merchant, Order, OrderEvent, OrderStatus,
    OrphanPayment, Sales, Size, StaffRefund, StaffRefundStatus, money_records_refuse, price_text, sources_of,
)
from payments.vend_window import make_overdue

T = TypeVar("T")

CONNECTIONS = {
    liveness.Connection.ONLINE: gettext_lazy("Online (in touch)"),
    liveness.Connection.OFFLINE: gettext_lazy("Offline (not in touch)"),
    liveness.Connection.NONE: gettext_lazy("No API token (staff's status decides)"),
}


class ConnectionFilter(admin.SimpleListFilter):
    """Whether the machine has called the machine API lately (payments.liveness)."""

    title = gettext_lazy("connection")
    parameter_name = "connection"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, Any]]:
        return [(str(connection), label) for connection, label in CONNECTIONS.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Device]) -> QuerySet[Device]:
        if self.value() not in {str(connection) for connection in CONNECTIONS}:
            return queryset
        return queryset.filter(liveness.connection_filter(liveness.Connection(self.value()), now=timezone.now()))


class MakeOverdueFilter(admin.SimpleListFilter):
    """Started, never reported made or failed within ORDER_MAKE_TIMEOUT_SECONDS: the staff decide."""

    title = gettext_lazy("started, not reported")
    parameter_name = "make_overdue"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, Any]]:
        return [("yes", gettext_lazy("Past the make timeout: check the machine"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Order]) -> QuerySet[Order]:
        return queryset.filter(make_overdue(now=timezone.now())) if self.value() == "yes" else queryset


class MachineFilter(admin.SimpleListFilter):
    """One machine's orders, by its id (`?machine=<device_uuid>`, as the sales rows link): a fleet has
    too many machines to list them all."""

    title = gettext_lazy("machine")
    parameter_name = "machine"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, Any]]:
        chosen = devices_of(request.user).filter(device_uuid=self.value()) if self.value() else Device.objects.none()
        return [(device.device_uuid, str(device)) for device in chosen]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Order]) -> QuerySet[Order]:
        return queryset.filter(device__device_uuid=self.value()) if self.value() else queryset


class ScopedRelatedFilter(admin.RelatedFieldListFilter):
    """A merchant or machine filter listing only the user's own (MerchantScoped.get_list_filter)."""

    def field_choices(self, field: Any, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[Any, str]]:
        chosen = merchants_of(request.user) if field.related_model is Merchant else devices_of(request.user)
        return [(obj.pk, str(obj)) for obj in chosen]


class ScopedAdmin(MerchantScoped, admin.ModelAdmin):
    """A ModelAdmin scoped to the user's merchants, its merchant and machine filters too."""

    def get_list_filter(self, request: HttpRequest) -> list[Any]:
        related = {field.name for field in self.model._meta.fields if field.related_model in (Merchant, Device)}
        return [(entry, ScopedRelatedFilter) if entry in related else entry for entry in super().get_list_filter(request)]


class MoneyRecordsAdmin(admin.ModelAdmin):
    """Merchants, machines and orders: a delete that would lose an order that had a payment shows why,
    in words, instead of listing every protected order (models.money_records_refuse)."""

    def get_deleted_objects(self, objs: Iterable[Any], request: HttpRequest) -> tuple[Any, ...]:
        try:
            with transaction.atomic():
                money_records_refuse(self.model._default_manager.filter(pk__in=[obj.pk for obj in objs]))
        except RecordsPermanent as refused:
            return [], {}, set(), [refused.message]
        return super().get_deleted_objects(objs, request)


def _staff(request: HttpRequest) -> Any:
    """What the staff user's actions change names them (the order's event log)."""
    return events.caused_by(EventCause.STAFF, request.user.get_username(), user_id=request.user.pk)


def _deactivate_action(service: Callable[[list[int]], int], done: Callable[[int], str]) -> Callable[..., None]:
    """An admin action that deactivates the selected machines or merchants (never deleted once they
    have money records) and says how many it changed."""

    @admin.action(description=gettext_lazy("Deactivate: take no more orders, keep the records"))
    def deactivate(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        changed = service(list(queryset.values_list("pk", flat=True)))
        modeladmin.message_user(request, done(changed) % {"count": changed},
                                messages.SUCCESS if changed else messages.WARNING)

    return deactivate


merchants_deactivate = _deactivate_action(
    lambda ids: services.merchants_deactivate(merchant_ids=ids),
    lambda changed: ngettext("%(count)d merchant deactivated: its machines take no more orders, its records stay.",
                             "%(count)d merchants deactivated: their machines take no more orders, their records "
                             "stay.", changed))
devices_deactivate = _deactivate_action(
    lambda ids: services.devices_deactivate(device_ids=ids),
    lambda changed: ngettext("%(count)d machine deactivated: it takes no more orders, its records stay.",
                             "%(count)d machines deactivated: they take no more orders, their records stay.",
                             changed))


@admin.register(Merchant)
class MerchantAdmin(MoneyRecordsAdmin, ScopedAdmin):
    merchant_lookup = "pk"
    list_display = ("name", "shop_id", "contact_email", "active_until", "two_stage_payments", "payment_methods",
                    "receipts_enabled")
    search_fields = ("name", "shop_id", "contact_email")
    ordering = ("name",)
    actions = [merchants_deactivate]
    filter_horizontal = ("staff",)
    fieldsets = [
        (None, {"fields": ("name", "contact_email", "active_until", "shop_id", "two_stage_payments",
                           "payment_methods")}),
        # docs/payments.md, "Receipts": what else the merchant arranges with the provider.
        (gettext_lazy("Receipts (54-FZ)"), {"fields": ("receipts_enabled", "tax_system_code", "vat_code",
                                                       "payment_subject", "payment_mode", "receipt_by_phone")}),
    ]
    # The operator's: the contract's end, the provider shop (whose key is in the server's settings) and
    # who else may see the merchant.
    SUPERUSER_FIELDS = ("active_until", "shop_id")

    def get_fieldsets(self, request: HttpRequest, obj: Merchant | None = None) -> list[Any]:
        fieldsets = list(super().get_fieldsets(request, obj))
        if request.user.is_superuser:
            fieldsets.append((gettext_lazy("Staff"), {"fields": ("staff",)}))
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Merchant | None = None) -> tuple[str, ...]:
        return () if request.user.is_superuser else self.SUPERUSER_FIELDS

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj: Merchant | None = None) -> bool:
        return request.user.is_superuser


class MenuItemInline(MerchantScoped, admin.TabularInline):
    model = MenuItem
    merchant_lookup = "device__merchant"
    extra = 1
    fields = ("drink_number", "size", "drink_name", "price_kopecks", "available", "vat_code", "payment_subject",
              "payment_mode")


class DeviceTextInline(MerchantScoped, admin.TabularInline):
    """The welcome and thank-you texts in one language each; the customer's language is shown first."""

    model = DeviceText
    merchant_lookup = "device__merchant"
    extra = 0
    fields = ("language", "welcome_text", "thank_you_text")


@admin.register(Device)
class DeviceAdmin(MachineTime, MoneyRecordsAdmin, ScopedAdmin):
    list_display = ("device_uuid", "merchant", "location", "status", "connection", "last_seen_at", "time_zone",
                    "credential_issued_at")
    list_filter = ("status", ConnectionFilter, "merchant")
    search_fields = ("device_uuid", "location")
    ordering = ("device_uuid",)
    list_select_related = ("merchant", "credential")
    # Written by the machine's own calls (payments.liveness).
    readonly_fields = ("last_seen_at",)
    # A logo address typed without a scheme is https (Django 6's default; silences 5.x's warning).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    inlines = [DeviceTextInline, MenuItemInline]
    actions = ["issue_credential", devices_deactivate]

    def machine_zone(self, obj: Device) -> str:
        return obj.time_zone

    @admin.display(description=gettext_lazy("Connection"))
    def connection(self, device: Device) -> str:
        connection = liveness.device_connection(has_token=hasattr(device, "credential"),
                                                last_seen_at=device.last_seen_at, now=timezone.now())
        return str(CONNECTIONS[connection])

    @admin.display(description=gettext_lazy("API token issued"))
    def credential_issued_at(self, device: Device) -> str | None:
        credential = getattr(device, "credential", None)
        return machine_time_text(credential.issued_at, device.time_zone) if credential else None

    @admin.action(description=gettext_lazy("Issue a new machine API token (the old one stops working)"))
    def issue_credential(self, request: HttpRequest, queryset: QuerySet[Device]) -> TemplateResponse:
        # A page of its own, not a message: messages may travel in a cookie, a token must not.
        issued = [(device, services.device_credential_issue(device_id=device.pk)) for device in queryset]
        response = TemplateResponse(
            request, "admin/payments/device/credentials_issued.html",
            {**self.admin_site.each_context(request), "issued": issued, "title": _("New machine API tokens"),
             "opts": self.model._meta},
        )
        response["Cache-Control"] = "no-store"
        return response


def _synchronous(service: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """An async service (one that calls the provider) for the admin's sync actions.

    On an event loop of its own, with a provider client of its own closed after the call: the
    action never depends on whether it runs under the ASGI server's loop, a test or a shell.
    """

    async def call(**kwargs: Any) -> T:
        try:
            return await service(**kwargs)
        finally:
            await provider.aclose()

    return async_to_sync(call, force_new_loop=True)


def _refusal(refused: IllegalTransition) -> str:
    """The refusal in the statuses' names staff see in the list, with the statuses that would do."""
    sources = sorted(str(OrderStatus(status).label) for status in sources_of(refused.target))
    return _("Order %(order)s is “%(current)s”: only an order that is %(sources)s can be marked “%(target)s”.") % {
        "order": refused.order_id, "current": OrderStatus(refused.current).label,
        "sources": _(" or ").join(_("“%(status)s”") % {"status": label} for label in sources),
        "target": OrderStatus(refused.target).label,
    }


def _transition_action(name: str, service: Callable[..., Order], description: str, *, target: OrderStatus
                       ) -> Callable[..., None]:
    def action(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        changed = failed = 0
        for order_id in queryset.values_list("pk", flat=True):
            try:
                with _staff(request):
                    service(order_id=order_id)
                changed += 1
            except IllegalTransition as refused:
                modeladmin.message_user(request, _refusal(refused), messages.WARNING)
            except PaymentsError as error:
                # Not a server error page: the other selected orders are still worth their messages
                # (a provider call left unfinished is finished by reconciliation).
                reason = _("Order %(order)s: %(reason)s") % {"order": order_id, "reason": error.message}
                modeladmin.message_user(request, reason, messages.ERROR)
                failed += 1
        if changed:
            done = ngettext("%(count)d order marked “%(target)s”.", "%(count)d orders marked “%(target)s”.", changed)
            modeladmin.message_user(request, done % {"count": changed, "target": target.label}, messages.SUCCESS)
        elif not failed:  # after an error the order may have moved part of the way: not "nothing"
            modeladmin.message_user(
                request, _("Nothing changed: none of the selected orders could be marked “%(target)s”.")
                % {"target": target.label}, messages.WARNING,
            )

    action.__name__ = name
    return admin.action(description=description)(action)


class OrderEventInline(MerchantScoped, admin.TabularInline):
    """The order's event log, oldest first; read-only, like the log itself (models.OrderEvent)."""

    model = OrderEvent
    merchant_lookup = "order__merchant"
    fields = readonly_fields = ("at", "operation", "status_change", "cause", "reference", "payment_id", "refund_id",
                                "amount", "refunded", "detail")
    extra = max_num = 0
    can_delete = False
    verbose_name_plural = gettext_lazy("Event log")

    @admin.display(description=gettext_lazy("status"))
    def status_change(self, event: OrderEvent) -> str:
        labels = [str(OrderStatus(status).label) for status in (event.status_from, event.status_to) if status]
        return " → ".join(labels) if event.status_from != event.status_to else labels[-1]

    @admin.display(description=gettext_lazy("amount"))
    def amount(self, event: OrderEvent) -> str:
        return price_text(event.amount_kopecks) if event.amount_kopecks is not None else ""

    @admin.display(description=gettext_lazy("refunded"))
    def refunded(self, event: OrderEvent) -> str:
        return price_text(event.refunded_kopecks) if event.refunded_kopecks else ""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Whoever may see the order sees its history.
        return request.user.has_perm("payments.view_order") or request.user.has_perm("payments.change_order")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class StaffRefundInline(OrderEventInline):
    """The order's refunds by staff and what the provider answered."""

    model = StaffRefund  # type: ignore[assignment]
    fields = readonly_fields = ("created_at", "amount", "reason", "username", "status", "refund_id",
                                "receipt_registration")
    verbose_name_plural = gettext_lazy("Refunds by staff")

    @admin.display(description=gettext_lazy("amount"))
    def amount(self, refund: StaffRefund) -> str:  # type: ignore[override]
        return price_text(refund.amount_kopecks)


@admin.register(Order)
class OrderAdmin(MachineTime, MoneyRecordsAdmin, ScopedAdmin):
    # Narrow enough for 1280 px beside the filters in either language (tests/integration/
    # test_admin_browser.py); the rest (the payment method too) is on the order's page and in the filters.
    list_display = ("id", "created_at", "machine", "drink", "price", "status", "paid_at", "receipt_contact")
    list_filter = ("status", MakeOverdueFilter, MachineFilter, "merchant", "test", "two_stage", "payment_method",
                   "receipt_registration")
    search_fields = ("id", "provider_payment_id", "device__device_uuid")
    list_select_related = ("device", "merchant")
    date_hierarchy = "created_at"
    # Orders come from scans and payments; an admin form must not bypass the state machine.
    readonly_fields = [field.name for field in Order._meta.fields]
    actions = [
        _transition_action("mark_manual_make", services.order_mark_manual_make, gettext_lazy("Mark as made by staff"),
                           target=OrderStatus.MANUAL_MAKE),
        # Then the money goes back at once: a refund, or the hold released.
        _transition_action(
            "mark_make_failed", _synchronous(services.order_mark_make_failed_and_return_money),
            gettext_lazy("Mark as could not be made (returns the money)"), target=OrderStatus.MAKE_FAILED,
        ),
        _transition_action("mark_failed", services.order_mark_failed, gettext_lazy("Mark as failed (unpaid orders)"),
                           target=OrderStatus.FAILED),
    ]

    inlines = [StaffRefundInline, OrderEventInline]

    def machine_zone(self, obj: Order) -> str:
        return obj.device.time_zone

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        refund = path("<path:object_id>/refund/", self.admin_site.admin_view(self.refund_view),
                      name="payments_order_refund")
        return [refund, *super().get_urls()]

    def _may_refund(self, request: HttpRequest, order: Order) -> bool:
        return self.has_view_or_change_permission(request, order) and request.user.has_perm("payments.refund_order")

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        order = self.get_object(request, unquote(object_id))
        refundable = order is not None and order.status in STAFF_REFUND_SOURCES and self._may_refund(request, order)
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "refundable": refundable})

    def refund_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """A refund by staff, in full or in part (services.order_staff_refund), for staff with the
        payments.refund_order permission."""
        order = self.get_object(request, unquote(object_id))
        if order is None:  # none such, or another merchant's
            raise Http404(_("No order %(order)s.") % {"order": unquote(object_id)})
        if not self._may_refund(request, order):
            raise PermissionDenied
        change_page = reverse("admin:payments_order_change", args=[quote(order.pk)])
        left = services.staff_refund_left(order=order)
        form = StaffRefundForm(request.POST if request.method == "POST" else None,
                               initial={"key": uuid.uuid4(), "amount": Decimal(max(left, 0)).scaleb(-2)})
        if request.method == "POST" and form.is_valid():
            try:
                with _staff(request):
                    refund = _synchronous(services.order_staff_refund)(
                        order_id=order.pk, key=form.cleaned_data["key"], amount_kopecks=form.amount_kopecks,
                        reason=form.cleaned_data["reason"], user_id=request.user.pk,
                        username=request.user.get_username())
            except RefundNotAllowed as refused:
                form.add_error(None, refused.message)
            except ProviderUnavailable:
                self.message_user(request, _("The payment service did not answer. The refund is recorded and is sent "
                                             "again, under the same key, by the next reconciliation run."),
                                  messages.WARNING)
                return HttpResponseRedirect(change_page)
            except PaymentsError as error:
                self.message_user(request, _("Order %(order)s: %(reason)s") % {"order": order.pk,
                                                                                 "reason": error.message},
                                  messages.ERROR)
                return HttpResponseRedirect(change_page)
            else:
                self._refund_message(request, refund)
                return HttpResponseRedirect(change_page)
        context = {
            **self.admin_site.each_context(request), "opts": self.opts, "order": order, "form": form,
            "title": _("Refund order %(order)s") % {"order": order.pk}, "change_page": change_page,
            "left": price_text(max(left, 0)), "price": price_text(order.price_kopecks),
        }
        return TemplateResponse(request, "admin/payments/order/refund.html", context)

    def _refund_message(self, request: HttpRequest, refund: StaffRefund) -> None:
        amount = {"amount": price_text(refund.amount_kopecks), "order": refund.order_id}
        if refund.status == StaffRefundStatus.SUCCEEDED:
            self.message_user(request, _("%(amount)s of order %(order)s refunded.") % amount, messages.SUCCESS)
        elif refund.status == StaffRefundStatus.PENDING:
            self.message_user(request, _("The refund of %(amount)s of order %(order)s is with the payment service: "
                                         "its answer is recorded when it comes.") % amount, messages.SUCCESS)
        else:
            self.message_user(request, _("The payment service did not refund %(amount)s of order %(order)s: %(status)s.")
                              % {**amount, "status": refund.get_status_display()}, messages.ERROR)

    @admin.display(description=gettext_lazy("machine"), ordering="device__device_uuid")
    def machine(self, order: Order) -> str:
        return order.device.device_uuid

    @admin.display(description=gettext_lazy("drink"), ordering="drink_name")
    def drink(self, order: Order) -> str:
        return f"{order.drink_name}, {str(Size(order.size).label).lower()}"

    @admin.display(description=gettext_lazy("price"), ordering="price_kopecks")
    def price(self, order: Order) -> str:
        return price_text(order.price_kopecks)

    @admin.display(description=gettext_lazy("receipt to"))
    def receipt_contact(self, order: Order) -> str:
        # Personal data: masked in the list, in full only on the order's own page.
        return order.contact_masked


@admin.register(OrphanPayment)
class OrphanPaymentAdmin(ScopedAdmin):
    """Payments reconciliation found that their order never recorded and could not take: the trace of
    each return, and the ones the staff must return themselves (status return_failed)."""

    list_display = ("found_at", "provider_payment_id", "order_id", "shop_id", "amount_kopecks", "status", "reason",
                    "refund_id")
    list_filter = ("status", "shop_id")
    search_fields = ("provider_payment_id", "order_id", "refund_id")
    date_hierarchy = "found_at"
    # Money records: written by reconciliation only, never changed or deleted by hand.
    readonly_fields = [field.name for field in OrphanPayment._meta.fields]

    def merchant_scope(self, request: HttpRequest) -> Q | None:
        # No order to follow (it may be gone): the payment's shop is the merchant's.
        if request.user.is_superuser:
            return None
        return Q(shop_id__in=merchants_of(request.user).values("shop_id"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: OrphanPayment | None = None) -> bool:
        return False


# The site's own name, in the staff's language (Django's reads "Django administration").
admin.site.site_header = admin.site.site_title = gettext_lazy("Coffee Payments Server")
admin.site.index_title = gettext_lazy("Back office")

# The report's admin (its own view permission): payments/admin_sales.py.
from payments.admin_sales import SalesAdmin  # noqa: E402

admin.site.register(Sales, SalesAdmin)
