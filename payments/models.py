"""Merchants, their coffee machines and the orders customers pay for.

Writes go through payments.services (the only code that changes an order's status), reads through
payments.selectors.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
import zoneinfo
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import connections, models, router, transaction
from django.db.models import Exists, OuterRef, Q
from django.db.models.signals import pre_delete
from django.dispatch import receiver
from django.utils import formats
from django.utils.functional import lazy
from django.utils.translation import gettext, gettext_lazy as _, gettext_noop, ngettext

from payments.errors import RecordsPermanent
from payments.personal_data import contact_mask
from payments.receipts import PaymentMode, PaymentSubject, TaxSystem, VatCode

# Ids that appear in QR codes and provider credentials: letters, digits, "-" and "_".
IDENTIFIER = r"[A-Za-z0-9_-]{1,64}"
identifier_validator = RegexValidator(rf"\A{IDENTIFIER}\Z", _("Use 1-64 letters, digits, '-' or '_'."))


def _percent(message: str, **values: str) -> str:
    """gettext(message) % values, in the language active when shown: names such as Europe/Moscow
    stay out of the catalogue's texts."""
    return gettext(message) % values


lazy_percent = lazy(_percent, str)


# Money records are permanent (docs/payments.md, "The event log"): an order that ever had a payment
# is never deleted, nor is its machine or merchant (they are deactivated instead). A refusal names at
# most this many of the orders and machines concerned.
NAMED_MAX = 5


def _names(values: list[str]) -> str:
    shown = ", ".join(dict.fromkeys(values[:NAMED_MAX]))
    return gettext("%(names)s and others") % {"names": shown} if len(values) > NAMED_MAX else shown


def money_records() -> Q:
    """Orders that ever had a payment: a provider payment recorded, a status past the unpaid ones, or
    an orphan payment naming them (its money went back; the trace stays). Kept for good."""
    orphans = OrphanPayment.objects.filter(order_id=OuterRef("pk"))
    return Q(provider_payment_id__isnull=False) | ~Q(status__in=UNPAID_STATUSES) | Q(Exists(orphans))


def _orders_kept(order_ids: list[str]) -> str:
    return ngettext("Order %(orders)s had a payment: money records are kept for good and never deleted.",
                    "Orders %(orders)s had a payment: money records are kept for good and never deleted.",
                    len(order_ids)) % {"orders": _names(order_ids)}


def money_records_refuse(rows: models.QuerySet[Any]) -> None:
    """Raise RecordsPermanent, naming them, if `rows` (orders, machines or merchants) are or have
    orders that had a payment. Else the orders concerned stay locked (PostgreSQL; SQLite's write
    transaction locks them all) until the caller's transaction ends: none takes a payment before
    the delete. Call it inside that transaction."""
    column = {Order: "pk", Device: "device", Merchant: "merchant"}[rows.model]
    orders = Order.objects.using(rows.db).filter(**{f"{column}__in": rows.order_by().values("pk")})
    def kept_orders() -> list[tuple[str, str, str]]:
        named = orders.filter(money_records()).order_by("pk")
        return list(named.values_list("pk", "device__device_uuid", "merchant__name")[:NAMED_MAX + 1])

    kept = kept_orders()
    if not kept and connections[rows.db].features.has_select_for_update:
        # Checked again once locked: an order may have been paid since the first look.
        list(orders.select_for_update(of=("self",)).values_list("pk", flat=True))
        kept = kept_orders()
    if not kept:
        return
    order_names = _names([order for order, _device, _merchant in kept])
    if rows.model is Order:
        message = _orders_kept([order for order, _device, _merchant in kept])
    elif rows.model is Device:
        machines = [device for _order, device, _merchant in kept]
        message = ngettext(
            "Machine %(machines)s has orders that had a payment (%(orders)s): money records are kept for good, so "
            "it cannot be deleted. Deactivate it instead: it takes no more orders and keeps its records.",
            "Machines %(machines)s have orders that had a payment (%(orders)s): money records are kept for good, "
            "so they cannot be deleted. Deactivate them instead: they take no more orders and keep their records.",
            len(set(machines)),
        ) % {"machines": _names(machines), "orders": order_names}
    else:
        merchants = [merchant for _order, _device, merchant in kept]
        message = ngettext(
            "Merchant %(merchants)s has orders that had a payment (%(orders)s): money records are kept for good, "
            "so it cannot be deleted. Deactivate it instead: it takes no more orders and keeps its records.",
            "Merchants %(merchants)s have orders that had a payment (%(orders)s): money records are kept for "
            "good, so they cannot be deleted. Deactivate them instead: they take no more orders and keep their "
            "records.",
            len(set(merchants)),
        ) % {"merchants": _names(merchants), "orders": order_names}
    raise RecordsPermanent(message, [order for order, _device, _merchant in kept])


class MoneyRecordsQuerySet(models.QuerySet[Any]):
    """Orders, machines and merchants: a delete that would take an order that had a payment with it
    is refused whole, naming them (money_records_refuse); the rest is Django's delete."""

    def delete(self) -> tuple[int, dict[str, int]]:
        with transaction.atomic(using=self.db):
            money_records_refuse(self)
            return super().delete()

    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]


class MoneyRecordsModel(models.Model):
    """Model.delete() refused as MoneyRecordsQuerySet.delete() is."""

    objects = MoneyRecordsQuerySet.as_manager()

    class Meta:
        abstract = True

    def delete(self, using: str | None = None, keep_parents: bool = False) -> tuple[int, dict[str, int]]:
        using = using or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using):
            money_records_refuse(type(self)._default_manager.using(using).filter(pk=self.pk))
            return super().delete(using=using, keep_parents=keep_parents)


def CASCADE_UNPAID_ORDERS(collector: Any, field: Any, sub_objs: Any, using: str) -> None:  # noqa: N802 (as CASCADE)
    """on_delete of an order's machine and merchant: orders that never had a payment go with them
    (their events too); one that had a payment refuses the delete (Device.delete and Merchant.delete
    say so first, in words)."""
    orders = Order.objects.using(using).filter(pk__in=[order.pk for order in sub_objs])
    kept = list(orders.filter(money_records())[:NAMED_MAX])
    if kept:
        raise RecordsPermanent(_orders_kept([order.pk for order in kept]), kept)
    models.CASCADE(collector, field, sub_objs, using)


class PaymentMethods(models.TextChoices):
    """What a merchant's payments ask the provider for (payment_method_data)."""

    ANY = "any", _("Any method of the shop: the customer chooses on the provider's page")
    BANK_CARD = "bank_card", _("Bank cards only")
    SBP = "sbp", _("SBP (Faster Payments System) only: always single-stage")


class Merchant(MoneyRecordsModel):
    name = models.CharField(_("merchant name"), max_length=200)
    contact_email = models.EmailField(_("contact e-mail"))
    # The last day the merchant may take orders (inclusive); after it every scan is refused.
    active_until = models.DateField(_("active until"))
    # The provider's shop id. Its secret key is looked up in PAYMENT_PROVIDER_SECRETS, never stored.
    shop_id = models.CharField(_("provider shop id"), max_length=64, validators=[identifier_validator])
    # Two-stage payments: the provider only holds the customer's money (`capture: false`) and this
    # server captures it when the machine reports the drink made, or releases it when it cannot be.
    # Read at the order's creation: a later change applies to new orders only.
    two_stage_payments = models.BooleanField(
        _("two-stage payments"), default=False,
        help_text=_("Hold the amount and charge it only when the machine reports the drink made."),
    )
    # The provider has no holds for SBP: an SBP-only merchant's payments are single-stage. With
    # `any`, a two-stage payment's page offers only the methods that can hold.
    payment_methods = models.CharField(_("payment methods"), max_length=16, choices=PaymentMethods.choices,
                                       default=PaymentMethods.ANY, db_default=PaymentMethods.ANY)
    # Fiscal receipts (54-FZ, docs/payments.md "Receipts"): every payment carries its receipt, which
    # the provider registers or passes to the merchant's online cash register. Read at the order's
    # creation, like two_stage_payments.
    receipts_enabled = models.BooleanField(
        default=False, db_default=False, verbose_name=_("send receipts (54-FZ)"),
        help_text=_("Payments carry a fiscal receipt; the order page asks the customer where to send it."),
    )
    tax_system_code = models.PositiveSmallIntegerField(
        _("tax system"), choices=TaxSystem.choices, null=True, blank=True,
        help_text=_("Sent when set: cash registers on FFD 1.2 and shops with several tax systems need it "
                    "(Чеки от ЮKassa ignore it)."),
    )
    # A menu item's receipt line takes these where it has none of its own.
    vat_code = models.PositiveSmallIntegerField(
        choices=VatCode.choices, null=True, blank=True, verbose_name=_("VAT rate"),
        help_text=_("Of menu items without their own."),
    )
    payment_subject = models.CharField(_("payment subject"), max_length=32, choices=PaymentSubject.choices,
                                       default=PaymentSubject.COMMODITY, db_default=PaymentSubject.COMMODITY,
                                       help_text=_("Of menu items without their own."))
    payment_mode = models.CharField(_("payment mode"), max_length=32, choices=PaymentMode.choices,
                                    default=PaymentMode.FULL_PAYMENT, db_default=PaymentMode.FULL_PAYMENT,
                                    help_text=_("Of menu items without their own."))
    receipt_by_phone = models.BooleanField(
        _("receipts by phone"), default=True, db_default=True,
        help_text=_("Customers may give a phone number instead of an e-mail address (off for Чеки от ЮKassa, "
                    "which send receipts by e-mail only)."),
    )
    # Staff users who see and change only this merchant's records in the admin (payments.admin_scope);
    # superusers see every merchant's. Edited by superusers only.
    staff = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="merchants", verbose_name=_("staff"),
        help_text=_("Staff users who see and change only this merchant's machines, orders and sales."),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("merchant")
        verbose_name_plural = _("merchants")

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.receipts_enabled and self.vat_code is None:
            raise ValidationError({"vat_code": _("Receipts need a VAT rate for the menu items that have none.")})

    def is_active_on(self, day: datetime.date) -> bool:
        return day <= self.active_until


# Where most machines that take roubles stand; a machine elsewhere gets its own zone in the admin.
DEFAULT_DEVICE_TIME_ZONE = "Europe/Moscow"


def time_zone_validate(name: str) -> None:
    """An IANA time zone name that this system's (or the tzdata package's) database knows."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            _("%(value)r is not an IANA time zone name, e.g. %(examples)s."),
            code="invalid_time_zone", params={"value": name, "examples": "Europe/Moscow, Asia/Yekaterinburg"},
        ) from None


class DeviceStatus(models.TextChoices):
    ONLINE = "online", _("Online")
    OFFLINE = "offline", _("Offline")
    ERROR = "error", _("Error")
    TEST = "test", _("Test")
    # Out of service for good, its records kept (a machine that took money is never deleted).
    DEACTIVATED = "deactivated", _("Deactivated")


# Machines in these states take orders; a test machine does, so a technician can try the flow.
ORDERING_DEVICE_STATUSES = frozenset({DeviceStatus.ONLINE, DeviceStatus.TEST})


class Device(MoneyRecordsModel):
    # The machine's own id, printed into its QR codes as `deviceUuid`.
    device_uuid = models.CharField(_("machine id"), max_length=64, unique=True, validators=[identifier_validator])
    merchant = models.ForeignKey(Merchant, on_delete=models.PROTECT, related_name="devices", verbose_name=_("merchant"))
    location = models.CharField(_("location"), max_length=255)
    status = models.CharField(_("status"), max_length=16, choices=DeviceStatus.choices, default=DeviceStatus.ONLINE)
    # Optional branding and texts shown to the customer on the order and status pages; a text in the
    # customer's language (DeviceText) comes first.
    brand_name = models.CharField(_("brand name"), max_length=100, blank=True)
    logo_url = models.URLField(_("logo address"), blank=True)
    welcome_text = models.CharField(
        _("welcome text"), max_length=500, blank=True,
        help_text=_("Shown in every language that has no welcome text of its own below."))
    thank_you_text = models.CharField(
        _("thank-you text"), max_length=500, blank=True,
        help_text=_("Shown in every language that has no thank-you text of its own below."))
    # The customer pages show times (e.g. "pay before") in the machine's local time.
    time_zone = models.CharField(
        _("time zone"), max_length=64, default=DEFAULT_DEVICE_TIME_ZONE, validators=[time_zone_validate],
        help_text=lazy_percent(gettext_noop("The machine's IANA time zone, e.g. %(example)s: the customer pages, the "
                                            "admin and the sales show its times in it."), example=DEFAULT_DEVICE_TIME_ZONE),
    )
    # The machine's last call to the machine API, written at most once per DEVICE_SEEN_INTERVAL_SECONDS
    # (payments.liveness); None: never since it has had a token.
    last_seen_at = models.DateTimeField(_("last seen"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("machine")
        verbose_name_plural = _("machines")

    def __str__(self) -> str:
        return f"{self.device_uuid} ({self.location})"


def language_choices() -> list[tuple[str, str]]:
    """The customer pages' languages (settings.LANGUAGES)."""
    return list(settings.LANGUAGES)


class DeviceText(models.Model):
    """A machine's customer texts in one language. The pages show the customer's language's text,
    else the machine's own text for every language, else (thank-you) the catalogue's."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="texts", verbose_name=_("machine"))
    language = models.CharField(_("language"), max_length=16, choices=language_choices)
    welcome_text = models.CharField(_("welcome text"), max_length=500, blank=True)
    thank_you_text = models.CharField(_("thank-you text"), max_length=500, blank=True)

    class Meta:
        verbose_name = _("customer text")
        verbose_name_plural = _("customer texts per language")
        constraints = [models.UniqueConstraint(fields=("device", "language"), name="device_text_unique_language")]

    def __str__(self) -> str:
        return f"{self.device_id} {self.language}"


class OrderStatus(models.TextChoices):
    CREATED = "created", _("Waiting for payment")
    PENDING = "pending", _("Payment in progress")
    PAID = "paid", _("Paid")
    HELD = "held", _("Paid (amount on hold)")
    NOT_PAID = "not_paid", _("Not paid")
    MAKE_PENDING = "make_pending", _("Being made")
    CAPTURE_PENDING = "capture_pending", _("Ready, completing payment")
    SUCCESSFUL = "successful", _("Ready")
    MAKE_FAILED = "make_failed", _("Could not be made")
    CANCEL_PENDING = "cancel_pending", _("Releasing the held amount")
    RELEASED = "released", _("Not charged")
    REFUND_PENDING = "refund_pending", _("Refund in progress")
    REFUNDED = "refunded", _("Refunded")
    REFUND_FAILED = "refund_failed", _("Refund failed, please ask the staff")
    FAILED = "failed", _("Failed")
    MANUAL_MAKE = "manual_make", _("Made by staff")


S = OrderStatus
# The order lifecycle: status -> the statuses it may move to. Anything else is refused.
#   created -> pending                     the provider accepted the payment
#   pending -> paid | held | not_paid      the provider says succeeded | waiting_for_capture | canceled
#   paid | held -> make_pending            the machine starts the drink
#   make_pending -> successful             made (single-stage: the money was taken at payment)
#   make_pending -> capture_pending -> successful     made (two-stage): capture the held amount
#   paid | held | make_pending -> make_failed      the machine could not make it (before or after starting)
#   make_failed -> refund_pending -> refunded | refund_failed   (single-stage)
#   make_pending | make_failed | held -> cancel_pending -> released   (two-stage: release the hold;
#                                          from make_pending and held only when the hold has aged)
#   held -> released                       the provider dropped the hold itself
#   held -> paid                           the held amount was captured outside this server
#   cancel_pending -> refund_pending       the hold turned out captured: refund instead
#   capture_pending -> failed              the hold was gone before the capture (logged as error)
#   paid | make_failed -> manual_make      staff hand the drink over themselves (single-stage)
#   paid -> refund_pending, held -> cancel_pending   the vend window closed: not started within
#                                          ORDER_MAKE_WINDOW_SECONDS of the payment (payments.vend_window)
#   created | pending -> failed            the payment cannot be trusted (e.g. wrong amount)
#   successful | manual_make | refund_failed -> refunded   staff refunds returned the whole price
#                                          (payments.services.order_staff_refund; a part leaves the status)
# The *_pending money states record an intent before the provider is called (with an
# Idempotence-Key derived from the order and the operation), so a crash between the call and the
# write of its result is finished by `manage.py reconcile_payments`. payments.services enforces
# which branch applies (single- or two-stage: Order.two_stage).
TRANSITIONS: dict[str, frozenset[str]] = {
    S.CREATED: frozenset({S.PENDING, S.FAILED}),
    S.PENDING: frozenset({S.PAID, S.HELD, S.NOT_PAID, S.FAILED}),
    S.PAID: frozenset({S.MAKE_PENDING, S.MAKE_FAILED, S.MANUAL_MAKE, S.REFUND_PENDING}),
    S.HELD: frozenset({S.PAID, S.MAKE_PENDING, S.MAKE_FAILED, S.CANCEL_PENDING, S.RELEASED}),
    S.MAKE_PENDING: frozenset({S.SUCCESSFUL, S.CAPTURE_PENDING, S.MAKE_FAILED, S.CANCEL_PENDING}),
    S.CAPTURE_PENDING: frozenset({S.SUCCESSFUL, S.FAILED}),
    S.MAKE_FAILED: frozenset({S.MANUAL_MAKE, S.REFUND_PENDING, S.CANCEL_PENDING}),
    S.CANCEL_PENDING: frozenset({S.RELEASED, S.REFUND_PENDING}),
    S.REFUND_PENDING: frozenset({S.REFUNDED, S.REFUND_FAILED}),
    S.NOT_PAID: frozenset(),
    S.SUCCESSFUL: frozenset({S.REFUNDED}),
    S.RELEASED: frozenset(),
    S.REFUNDED: frozenset(),
    S.REFUND_FAILED: frozenset({S.REFUNDED}),
    S.FAILED: frozenset(),
    S.MANUAL_MAKE: frozenset({S.REFUNDED}),
}
# Staff may refund these, in full or in part: the money was taken and kept, and no flow of the server
# moves it any more (paid and make_failed orders get it back by the vend window or their refund).
STAFF_REFUND_SOURCES = frozenset({S.SUCCESSFUL, S.MANUAL_MAKE, S.REFUND_FAILED})
# Nothing more happens to these by itself (the customer's page stops polling); only a staff refund
# may still end one of them refunded.
FINAL_STATUSES = frozenset(status for status, targets in TRANSITIONS.items()
                           if not targets - ({S.REFUNDED} if status in STAFF_REFUND_SOURCES else set()))
# A payment may be started for these (again, for pending: the same Idempotence-Key returns the
# same provider payment, so a retry never charges twice).
PAYABLE_STATUSES = frozenset({S.CREATED, S.PENDING})
# The customer's money is taken (paid) or held for the order (held): the machine may make it.
MAKEABLE_STATUSES = frozenset({S.PAID, S.HELD})
# A provider call is due or may be in flight: reconciliation finishes these.
MONEY_PENDING_STATUSES = frozenset({S.CAPTURE_PENDING, S.CANCEL_PENDING, S.REFUND_PENDING})
# A machine's report (make_pending, successful, make_failed) -> the statuses an order may be in
# once that report was applied, money flows included: a repeated report finding one is harmless.
REPORTED_STATUSES: dict[str, frozenset[str]] = {
    S.MAKE_PENDING: frozenset({S.MAKE_PENDING, S.CAPTURE_PENDING, S.SUCCESSFUL, S.MAKE_FAILED, S.CANCEL_PENDING,
                               S.REFUND_PENDING, S.RELEASED, S.REFUNDED, S.REFUND_FAILED, S.MANUAL_MAKE}),
    S.SUCCESSFUL: frozenset({S.CAPTURE_PENDING, S.SUCCESSFUL}),
    S.MAKE_FAILED: frozenset({S.MAKE_FAILED, S.CANCEL_PENDING, S.REFUND_PENDING, S.RELEASED, S.REFUNDED,
                              S.REFUND_FAILED, S.MANUAL_MAKE}),
}
# No money was ever taken or held. Those without a provider payment (money_records) are the only
# orders ever deleted: by reconciliation, after the retention period.
UNPAID_STATUSES = frozenset({S.CREATED, S.NOT_PAID})


def order_expired(*, status: str, expires_at: datetime.datetime, now: datetime.datetime) -> bool:
    """The one expiry rule: no payment was started within the order's window (ORDER_EXPIRY_MINUTES
    from its first scan), so none can be now, and its pages and polls say "expired". A payment
    started in time (pending) is followed to its end, as the provider decides it."""
    return status == OrderStatus.CREATED and now >= expires_at


def sources_of(status: str) -> frozenset[str]:
    """The statuses from which `status` may be reached."""
    return frozenset(source for source, targets in TRANSITIONS.items() if status in targets)


class Size(models.IntegerChoices):
    SMALL = 1, _("Small")
    MEDIUM = 2, _("Medium")
    LARGE = 3, _("Large")


# Kopecks: up to 10 000 roubles, far above any drink; a bigger number is a mistake.
PRICE_MAX = 1_000_000
DRINK_NUMBER_MAX = 9999
DRINK_NAME_MAX = 100


def price_text(kopecks: int) -> str:
    """A price in roubles in the active language: "1 590,00 ₽" in Russian, "1,590.00 ₽" in English."""
    amount = formats.number_format(decimal.Decimal(kopecks).scaleb(-2), 2, use_l10n=True, force_grouping=True)
    return f"{amount}\N{NO-BREAK SPACE}\N{RUBLE SIGN}"


class MenuItem(models.Model):
    """What a machine sells: its drink number and size -> name and price. Orders take both from here,
    never from the QR link."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="menu_items", verbose_name=_("machine"))
    drink_number = models.PositiveIntegerField(
        _("drink number"), validators=[MinValueValidator(1), MaxValueValidator(DRINK_NUMBER_MAX)])
    size = models.PositiveSmallIntegerField(_("size"), choices=Size.choices)
    drink_name = models.CharField(_("drink"), max_length=DRINK_NAME_MAX)
    price_kopecks = models.PositiveIntegerField(
        _("price, kopecks"), validators=[MinValueValidator(1), MaxValueValidator(PRICE_MAX)])
    # Off: scans of this drink are refused (out of milk), the price stays on record.
    available = models.BooleanField(_("available"), default=True)
    # The drink's receipt line, where it differs from the merchant's (empty: the merchant's).
    vat_code = models.PositiveSmallIntegerField(_("VAT rate"), choices=VatCode.choices, null=True, blank=True)
    payment_subject = models.CharField(_("payment subject"), max_length=32, choices=PaymentSubject.choices,
                                       blank=True, db_default="")
    payment_mode = models.CharField(_("payment mode"), max_length=32, choices=PaymentMode.choices, blank=True,
                                    db_default="")
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("drink on the menu")
        verbose_name_plural = _("drinks on the menu")
        ordering = ("drink_number", "size")
        constraints = [
            models.UniqueConstraint(fields=("device", "drink_number", "size"), name="menu_item_unique_drink_size"),
        ]

    def __str__(self) -> str:
        return f"{self.drink_number} {self.drink_name} ({self.get_size_display()})"


class DeviceCredential(models.Model):
    """A machine's API token, stored as its SHA-256: `<key_id>.<secret>`, the key id finds the row.

    One per machine; issuing a new one replaces it, so the old token stops working at once.
    """

    device = models.OneToOneField(Device, on_delete=models.CASCADE, related_name="credential", verbose_name=_("machine"))
    key_id = models.CharField(_("key id"), max_length=32, unique=True)
    token_sha256 = models.CharField(_("token hash"), max_length=64)
    issued_at = models.DateTimeField(_("issued"))

    class Meta:
        verbose_name = _("machine API token")
        verbose_name_plural = _("machine API tokens")

    def __str__(self) -> str:
        return f"credential {self.key_id} of {self.device_id}"


class Order(MoneyRecordsModel):
    # The machine's own order id from the QR code, e.g. "20250317110122659ba6d7-9ace-cndn". The
    # primary key, so the status poll is one primary-key read.
    id = models.CharField(_("order id"), primary_key=True, max_length=64)
    device = models.ForeignKey(Device, on_delete=CASCADE_UNPAID_ORDERS, related_name="orders", verbose_name=_("machine"))
    # The merchant at the time of the order: a machine may later move to another merchant.
    merchant = models.ForeignKey(Merchant, on_delete=CASCADE_UNPAID_ORDERS, related_name="orders", verbose_name=_("merchant"))
    drink_number = models.PositiveIntegerField(_("drink number"))
    drink_name = models.CharField(_("drink"), max_length=100)
    size = models.PositiveSmallIntegerField(_("size"), choices=Size.choices)
    # Whole kopecks: no floating point anywhere near money.
    price_kopecks = models.PositiveIntegerField(_("price, kopecks"))
    # Scanned on a machine in test mode: its payment must be a test shop's (no real money), and the
    # pages say so.
    test = models.BooleanField(_("test"), default=False, db_default=False)
    status = models.CharField(_("status"), max_length=16, choices=OrderStatus.choices, default=OrderStatus.CREATED)
    expires_at = models.DateTimeField(_("pay before"))
    # Set when the provider accepted the payment; notifications are matched on it.
    provider_payment_id = models.CharField(_("provider payment id"), max_length=64, null=True, blank=True, unique=True)
    # The payment asks the provider to hold the amount (`capture: false`), from the merchant's
    # setting at creation: the body sent under the order's Idempotence-Key must never change. Cleared
    # when the provider reports the amount captured outside this server (from then on, refunds).
    two_stage = models.BooleanField(_("two-stage"), default=False)
    # Two-stage: the held amount is released if the drink is not made by then (ORDER_HOLD_MAX_MINUTES,
    # or the provider's own expires_at if sooner).
    hold_expires_at = models.DateTimeField(_("hold expires"), null=True, blank=True)
    # Single-stage: the refund of a paid drink that could not be made, as the provider reports it.
    refund_id = models.CharField(_("refund id"), max_length=64, null=True, blank=True)
    refund_status = models.CharField(_("refund status"), max_length=16, blank=True)
    refunded_kopecks = models.PositiveIntegerField(_("refunded, kopecks"), default=0)
    # When reconciliation last claimed the order (a run skips orders another run claimed recently).
    reconciled_at = models.DateTimeField(_("reconciled"), null=True, blank=True)
    # When a status poll or the return page last claimed a re-read of the pending order's payment
    # from the provider: at most one per ORDER_PROVIDER_RECHECK_SECONDS, whichever worker asks.
    provider_checked_at = models.DateTimeField(_("provider checked"), null=True, blank=True)
    # When the money was taken or held: the vend window (ORDER_MAKE_WINDOW_SECONDS) starts here. None
    # for orders paid before the window existed: those stay with the staff.
    paid_at = models.DateTimeField(_("paid"), null=True, blank=True)
    # When the vend window closed on the order, not started: its money is returned.
    make_window_closed_at = models.DateTimeField(_("vend window closed"), null=True, blank=True)
    # When the order, started, was found unreported past ORDER_MAKE_TIMEOUT_SECONDS: handed to the staff.
    make_overdue_at = models.DateTimeField(_("make overdue"), null=True, blank=True)
    # The payment's method as asked (payment_method_data.type; empty: the provider's page offers the
    # shop's) from the merchant's at creation, and as the customer paid (payment_method.type).
    requested_method = models.CharField(_("method asked"), max_length=16, blank=True, db_default="")
    payment_method = models.CharField(_("payment method"), max_length=32, blank=True, db_default="")
    # The receipt's lines as at the first scan (payments.receipts.receipt_template); None: no receipt.
    receipt = models.JSONField(_("receipt"), null=True, blank=True)
    # Where the receipt goes: an e-mail address or E.164 phone digits. Personal data: never logged,
    # masked in the admin's list, erased ORDER_CONTACT_RETENTION_DAYS after the order's creation.
    customer_contact = models.CharField(_("receipt contact"), max_length=254, blank=True, db_default="")
    # The provider's registration of the payment's and the refund's receipts: pending, succeeded, canceled.
    receipt_registration = models.CharField(_("receipt registration"), max_length=16, blank=True, db_default="")
    refund_receipt_registration = models.CharField(_("refund receipt registration"), max_length=16, blank=True,
                                                   db_default="")
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("order")
        verbose_name_plural = _("orders")
        ordering = ("-created_at",)
        indexes = [
            models.Index(fields=("device", "-created_at"), name="order_device_created"),
            # The sales' days and the orders list, newest first: of every merchant, and of one
            # (bench/sales.py: a seq scan of a fleet's year otherwise).
            models.Index(fields=("created_at",), name="order_created"),
            models.Index(fields=("merchant", "created_at"), name="order_merchant_created"),
            # Reconciliation's scans: orders in a status, oldest change first.
            models.Index(fields=("status", "updated_at"), name="order_status_updated"),
            # Reconciliation erases contacts past their retention: only orders that still have one.
            models.Index(fields=("created_at",), condition=~models.Q(customer_contact=""),
                         name="order_contact_created"),
            # ... and re-reads receipts still being registered: a few orders, never every paid one.
            models.Index(fields=("updated_at",), name="order_receipt_pending", condition=models.Q(
                receipt_registration="pending") | models.Q(refund_receipt_registration="pending")),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.drink_name} ({self.get_status_display()})"

    @property
    def price_text(self) -> str:
        """The price as the pages show it, in the active language (price_text)."""
        return price_text(self.price_kopecks)

    @property
    def price_rubles(self) -> str:
        """"123.45": kopecks as the provider and the customer read them."""
        return f"{self.price_kopecks // 100}.{self.price_kopecks % 100:02d}"

    @property
    def contact_masked(self) -> str:
        return contact_mask(self.customer_contact)

    def is_expired(self, now: datetime.datetime) -> bool:
        return order_expired(status=self.status, expires_at=self.expires_at, now=now)


class OrphanPaymentStatus(models.TextChoices):
    RETURN_PENDING = "return_pending", _("Returning the money")
    RETURNED = "returned", _("Money returned")
    RETURN_FAILED = "return_failed", _("Return refused: staff must return the money")


class OrphanPayment(models.Model):
    """A provider payment that names an order which never recorded it, and which that order can no
    longer take (expired, failed, paid by another payment): its money goes back, and this row keeps
    the trace. Written by reconciliation (payments.orphans); never deleted, never attached."""

    provider_payment_id = models.CharField(_("provider payment id"), max_length=64, unique=True)
    shop_id = models.CharField(_("provider shop id"), max_length=64)
    # The payment's metadata.order_id. Not a foreign key: the row outlives the order's retention.
    order_id = models.CharField(_("order id"), max_length=64)
    # What goes back: the amount taken or held, less what was refunded before it was found.
    amount_kopecks = models.PositiveIntegerField(_("amount, kopecks"))
    # Why the order cannot take it, e.g. "order is failed" or "order expired at ...".
    reason = models.CharField(_("reason"), max_length=200)
    status = models.CharField(_("status"), max_length=16, choices=OrphanPaymentStatus.choices,
                              default=OrphanPaymentStatus.RETURN_PENDING)
    # The payment's status at the provider when last read; the refund that returned it, if one did.
    provider_status = models.CharField(_("provider status"), max_length=32)
    refund_id = models.CharField(_("refund id"), max_length=64, blank=True)
    found_at = models.DateTimeField(_("found"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("orphan payment")
        verbose_name_plural = _("orphan payments")
        ordering = ("-found_at",)

    def __str__(self) -> str:
        return gettext("payment %(payment)s of order %(order)s (%(status)s)") % {
            "payment": self.provider_payment_id, "order": self.order_id, "status": self.get_status_display()}


@receiver(pre_delete, sender=Order)
def _order_delete_refuse(sender: type[Order], instance: Order, **kwargs: Any) -> None:
    """The last guard, for any path through Django's delete collector: the order's own columns. The
    paths above refuse first, in words, and also for orphan payments."""
    if instance.provider_payment_id is not None or instance.status not in UNPAID_STATUSES:
        raise RecordsPermanent(_orders_kept([instance.pk]), [instance])


class EventCause(models.TextChoices):
    """Who or what made an order's change; `OrderEvent.reference` names which one."""

    CUSTOMER = "customer", _("Customer")  # a page of the customer's: the request id
    STATUS_POLL = "status_poll", _("Status poll")  # the status page's poll re-read the payment: the request id
    NOTIFICATION = "notification", _("Provider notification")  # the event and its payment (or refund) id
    MACHINE = "machine", _("Machine")  # the machine API: its credential's key id
    STAFF = "staff", _("Staff")  # the admin: the user name (and OrderEvent.user_id)
    RECONCILIATION = "reconciliation", _("Reconciliation")  # manage.py reconcile_payments: its run id
    VEND_WINDOW = "vend_window", _("Vend window check")  # a server worker's check: its process id
    UNRECORDED = "unrecorded", _("Not recorded")  # a shell or a script: no entry point named the cause


class EventOperation(models.TextChoices):
    """What happened: a status change (machine reports, staff actions) or a provider operation."""

    SCAN = "scan", _("Created by a scan")
    STATUS = "status", _("Status change")
    PAYMENT_CREATE = "payment_create", _("Payment created")
    PAYMENT_READ = "payment_read", _("Payment read")
    CAPTURE = "capture", _("Capture")
    CANCEL = "cancel", _("Hold released")
    REFUND = "refund", _("Refund")
    REFUND_READ = "refund_read", _("Refund read")
    WINDOW_CLOSE = "window_close", _("Vend window closed")
    HOLD_EXPIRED = "hold_expired", _("Hold expired")
    MONEY_RETURN = "money_return", _("Money return due")
    MAKE_OVERDUE = "make_overdue", _("Started, not reported")
    STAFF_REFUND = "staff_refund", _("Staff refund requested")
    STAFF_REFUND_ANSWER = "staff_refund_answer", _("Staff refund answered")
    ORPHAN_FOUND = "orphan_found", _("Unrecorded payment found")
    ORPHAN_RETURN = "orphan_return", _("Unrecorded payment returned")


class OrderEventQuerySet(models.QuerySet["OrderEvent"]):
    """The log is append-only: no update, no delete. Its rows go only with their order, an order that
    never had a payment (Django's delete collector removes them with it, past this queryset)."""

    def update(self, **kwargs: Any) -> int:
        raise RecordsPermanent(_append_only(), list(self[:1]))

    def delete(self) -> tuple[int, dict[str, int]]:
        raise RecordsPermanent(_append_only(), list(self[:1]))

    def bulk_update(self, objs: Any, fields: Any, batch_size: int | None = None) -> int:
        raise RecordsPermanent(_append_only(), list(objs)[:1])

    update.alters_data = delete.alters_data = bulk_update.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]


def _append_only() -> str:
    return gettext("An order's event log is append-only: its rows are never changed or deleted.")


class OrderEvent(models.Model):
    """One change of an order, with its cause and time, written in the transaction of the change
    (payments.events). Replayed in order, the rows arrive at the order's status, payment and refunds."""

    # No database constraint: the previous release, during a rollout or after a rollback, deletes
    # unpaid orders without knowing this table; their rows would otherwise stop its reconciliation.
    order = models.ForeignKey(Order, on_delete=models.CASCADE, db_constraint=False, related_name="events",
                              verbose_name=_("order"))
    at = models.DateTimeField(_("at"))
    operation = models.CharField(_("operation"), max_length=24, choices=EventOperation.choices)
    # The status before and after ("" before the first); the same when the status did not change.
    status_from = models.CharField(_("status before"), max_length=16, blank=True)
    status_to = models.CharField(_("status after"), max_length=16)
    cause = models.CharField(_("cause"), max_length=16, choices=EventCause.choices)
    # Which one: the request id, the notification, the credential's key id, the user name, the run id.
    reference = models.CharField(_("reference"), max_length=200, blank=True)
    # The staff user's id; not a foreign key, so the log outlives (and never changes with) the user.
    user_id = models.BigIntegerField(_("user id"), null=True, blank=True)
    # The provider's objects the change concerns, the amount it names, and what it gave back.
    payment_id = models.CharField(_("payment id"), max_length=64, blank=True)
    refund_id = models.CharField(_("refund id"), max_length=64, blank=True)
    amount_kopecks = models.PositiveIntegerField(_("amount, kopecks"), null=True, blank=True)
    refunded_kopecks = models.PositiveIntegerField(_("refunded, kopecks"), default=0)
    # The provider's answer or the staff's reason, in a line.
    detail = models.CharField(_("detail"), max_length=200, blank=True)

    objects = OrderEventQuerySet.as_manager()

    class Meta:
        ordering = ("id",)
        verbose_name = _("order event")
        verbose_name_plural = _("order events")

    def __str__(self) -> str:
        return f"{self.order_id} {self.operation} {self.status_from}->{self.status_to}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise RecordsPermanent(_append_only(), [self])
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise RecordsPermanent(_append_only(), [self])


class StaffRefundStatus(models.TextChoices):
    REQUESTED = "requested", _("Requested (the provider has not answered yet)")
    PENDING = "pending", _("With the provider")
    SUCCEEDED = "succeeded", _("Refunded")
    CANCELED = "canceled", _("Canceled by the provider")
    REFUSED = "refused", _("Refused by the provider")


# A staff refund in these still counts against what is left to refund.
STAFF_REFUND_OPEN = frozenset({StaffRefundStatus.REQUESTED, StaffRefundStatus.PENDING})


class StaffRefundQuerySet(models.QuerySet["StaffRefund"]):
    def delete(self) -> tuple[int, dict[str, int]]:
        raise RecordsPermanent(_staff_refunds_kept(), list(self[:1]))

    delete.alters_data = delete.queryset_only = True  # type: ignore[attr-defined]


def _staff_refunds_kept() -> str:
    return gettext("Staff refunds are money records: they are kept for good.")


class StaffRefund(models.Model):
    """A refund staff asked for, in full or in part. Written before the provider is called, its id
    being the call's Idempotence-Key: a repeated form, a retry and reconciliation send the same
    refund. Never deleted (a money record)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="staff_refunds", verbose_name=_("order"))
    amount_kopecks = models.PositiveIntegerField(_("amount, kopecks"))
    reason = models.CharField(_("reason"), max_length=200)
    # Who asked; not a foreign key, so the record outlives the user.
    user_id = models.BigIntegerField(_("user id"), null=True)
    username = models.CharField(_("user"), max_length=150)
    status = models.CharField(_("status"), max_length=16, choices=StaffRefundStatus.choices,
                              default=StaffRefundStatus.REQUESTED)
    # The provider's refund and its receipt's registration, once it answered.
    refund_id = models.CharField(_("refund id"), max_length=64, blank=True, db_index=True)
    receipt_registration = models.CharField(_("receipt registration"), max_length=16, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    objects = StaffRefundQuerySet.as_manager()

    class Meta:
        ordering = ("created_at",)
        verbose_name = _("staff refund")
        verbose_name_plural = _("staff refunds")
        permissions = [("refund_order", _("Can refund orders' money to customers"))]
        indexes = [
            # Reconciliation finishes refunds the provider has not answered or settled.
            models.Index(fields=("updated_at",), name="staff_refund_open",
                         condition=models.Q(status__in=("requested", "pending"))),
        ]

    def __str__(self) -> str:
        return f"refund of {self.amount_kopecks} kopecks of order {self.order_id} ({self.status})"

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise RecordsPermanent(_staff_refunds_kept(), [self])
class JobSuccess(models.Model):
    """When a scheduled command last finished without an error (`reconcile_payments`): /metrics reports
    it (payments/scrape_metrics.py), so an alert sees a job that stopped succeeding, or running."""

    name = models.CharField(primary_key=True, max_length=64)
    succeeded_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} succeeded at {self.succeeded_at}"


class Sales(Order):
    """Orders summed per machine and per day in the machine's time zone (payments.sales): a proxy, so
    that the admin lists the report with the models and it has a view permission of its own."""

    class Meta:
        proxy = True
        verbose_name = _("sales")
        verbose_name_plural = _("sales by machine and day")
