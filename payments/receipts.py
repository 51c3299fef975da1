"""Fiscal receipts (54-FZ): the `receipt` object a payment carries, built from the order.

The allowed values are YooKassa's (its 54-FZ reference; the official SDK's constants judge them in
tests). An order stores its receipt lines at the first scan (`Order.receipt`), so every attempt at
its payment sends the same body under its Idempotence-Key, whatever the menu or the merchant's
settings become; the customer's contact is added when they pay. The flow: docs/payments.md,
"Receipts".
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.db import models
from django.utils import translation
from django.utils.translation import gettext_lazy as _

if TYPE_CHECKING:
    from payments.models import MenuItem, Merchant

CURRENCY = "RUB"
# Receipt limits: a line's description (tag 1030) is 128 characters.
DESCRIPTION_MAX = 128
# A cup is counted in pieces; Чеки от ЮKassa and cash registers on FFD 1.2 require the measure.
MEASURE = "piece"
QUANTITY = "1.000"


class VatCode(models.IntegerChoices):
    """vat_code (tag 1199). From 2026 the standard rate is 22 % (codes 11 and 12)."""

    NONE = 1, _("No VAT")
    VAT_0 = 2, _("VAT 0%")
    VAT_10 = 3, _("VAT 10%")
    VAT_20 = 4, _("VAT 20% (before 2026)")
    VAT_10_110 = 5, _("VAT 10/110")
    VAT_20_120 = 6, _("VAT 20/120 (before 2026)")
    VAT_5 = 7, _("VAT 5%")
    VAT_7 = 8, _("VAT 7%")
    VAT_5_105 = 9, _("VAT 5/105")
    VAT_7_107 = 10, _("VAT 7/107")
    VAT_22 = 11, _("VAT 22%")
    VAT_22_122 = 12, _("VAT 22/122")


class TaxSystem(models.IntegerChoices):
    """tax_system_code (tag 1055)."""

    GENERAL = 1, _("General (OSN)")
    SIMPLIFIED_INCOME = 2, _("Simplified, income (USN)")
    SIMPLIFIED_PROFIT = 3, _("Simplified, income minus expenses (USN)")
    IMPUTED = 4, _("Imputed income (ENVD)")
    AGRICULTURAL = 5, _("Agricultural (ESKhN)")
    PATENT = 6, _("Patent")


class PaymentSubject(models.TextChoices):
    """payment_subject (tag 1212): what is paid for."""

    COMMODITY = "commodity", _("Goods")
    EXCISE = "excise", _("Excise goods")
    JOB = "job", _("Work")
    SERVICE = "service", _("Service")
    GAMBLING_BET = "gambling_bet", _("Gambling bet")
    GAMBLING_PRIZE = "gambling_prize", _("Gambling prize")
    LOTTERY = "lottery", _("Lottery ticket")
    LOTTERY_PRIZE = "lottery_prize", _("Lottery prize")
    INTELLECTUAL_ACTIVITY = "intellectual_activity", _("Intellectual property")
    PAYMENT = "payment", _("Payment")
    AGENT_COMMISSION = "agent_commission", _("Agent's commission")
    COMPOSITE = "composite", _("Composite")
    ANOTHER = "another", _("Other")


class PaymentMode(models.TextChoices):
    """payment_mode (tag 1214). A drink paid and poured at once is full_payment; the prepayment
    modes need a second, settlement receipt at delivery, which this server does not send."""

    FULL_PAYMENT = "full_payment", _("Full payment")
    FULL_PREPAYMENT = "full_prepayment", _("Full prepayment")
    PARTIAL_PREPAYMENT = "partial_prepayment", _("Partial prepayment")
    ADVANCE = "advance", _("Advance")
    PARTIAL_PAYMENT = "partial_payment", _("Partial payment and credit")
    CREDIT = "credit", _("Credit")
    CREDIT_PAYMENT = "credit_payment", _("Credit payment")


def receipt_line_description(*, drink_name: str, size_label: str) -> str:
    return f"{drink_name}, {size_label}"[:DESCRIPTION_MAX]


def receipt_template(*, merchant: Merchant, item: MenuItem) -> dict[str, Any] | None:
    """The receipt of one drink from `item` as the merchant sells it, without the customer; None
    when the merchant sends no receipts. Stored on the order at its first scan.

    A line's VAT code, subject and mode are the menu item's, or the merchant's where the item has
    none. ValueError when neither has a VAT code (an operator's mistake: no receipt can be sent).
    """
    if not merchant.receipts_enabled:
        return None
    vat_code = item.vat_code or merchant.vat_code
    if vat_code is None:
        raise ValueError(f"neither menu item {item.pk} nor merchant {merchant.pk} has a VAT code")
    # A fiscal document in Russian, whatever language the customer reads.
    with translation.override("ru"):
        size_label = str(item.get_size_display()).lower()
    line = {
        "description": receipt_line_description(drink_name=item.drink_name, size_label=size_label),
        "quantity": QUANTITY,
        "amount": {"value": str(Decimal(item.price_kopecks).scaleb(-2)), "currency": CURRENCY},
        "vat_code": int(vat_code),
        "payment_subject": item.payment_subject or merchant.payment_subject,
        "payment_mode": item.payment_mode or merchant.payment_mode,
        "measure": MEASURE,
    }
    template: dict[str, Any] = {"items": [line]}
    if merchant.tax_system_code is not None:
        template["tax_system_code"] = int(merchant.tax_system_code)
    return template


def payment_receipt(*, template: dict[str, Any], contact: str) -> dict[str, Any]:
    """The `receipt` of a payment: the order's stored lines and where to send the receipt
    (an e-mail address, or a phone number as E.164 digits: payments.forms.contact_parse)."""
    customer = {"email": contact} if "@" in contact else {"phone": contact}
    return {"customer": customer, **template}



def refund_receipt(*, template: dict[str, Any], contact: str, amount_kopecks: int) -> dict[str, Any]:
    """The `receipt` of a refund of part of a payment: the order's line at the amount returned (one
    piece, as sold) and where the receipt goes. A refund of the whole payment needs none."""
    line = {**template["items"][0], "quantity": QUANTITY,
            "amount": {"value": str(Decimal(amount_kopecks).scaleb(-2)), "currency": CURRENCY}}
    return payment_receipt(template={**template, "items": [line]}, contact=contact)
