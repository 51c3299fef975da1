"""Why a request cannot go on: each error carries its HTTP status and a message for the customer.

Views turn any PaymentsError into the customer error page (or a JSON error) with that status; the
message is one line a customer can act on, never a trace. Titles and the customer messages are in
the request's language (the messages are translated where they are raised).
"""

from __future__ import annotations

import math

from django.db.models import ProtectedError
from django.utils.translation import gettext_lazy as _


class RecordsPermanent(ProtectedError):
    """A delete (or a change of the event log) that would lose a money record: an order that had a
    payment, its machine or merchant, an event, a staff refund. `message` names them, in the active
    language; `protected_objects` holds (some of) them, as Django's ProtectedError does."""

    def __init__(self, message: str, records: list[object]) -> None:
        super().__init__(str(message), records)
        self.message = str(message)


class PaymentsError(Exception):
    status = 400
    title = _("Something is wrong with this order")

    def __init__(self, message: str) -> None:
        message = str(message)  # a lazy translation: in the language of the request that raised it
        super().__init__(message)
        self.message = message


class InvalidParameter(PaymentsError):
    status = 400
    title = _("This QR code is not valid")


class PageNotFound(PaymentsError):
    """A path nothing answers (a QR link cut short): Django's 404, as a customer page."""

    status = 404
    title = _("This page does not exist")


class BadRequest(PaymentsError):
    """A request Django refuses before any view (a Host it does not serve): its 400, as a customer page."""

    status = 400
    title = _("This request could not be served")


class FormExpired(PaymentsError):
    """The Pay form came back without its CSRF cookie: an old page, or cookies blocked."""

    status = 403
    title = _("This page has expired")


class ServerError(PaymentsError):
    """A bug: Django's 500, as a customer page (the traceback goes to the log)."""

    status = 500
    title = _("Something went wrong on our side")
class ContactInvalid(PaymentsError):
    """The customer's contact for the receipt is missing or is not an e-mail address or a phone
    number; the message never repeats it (personal data)."""

    status = 400
    title = _("Where should we send your receipt?")


class DeviceNotFound(PaymentsError):
    status = 404
    title = _("Unknown coffee machine")


class OrderNotFound(PaymentsError):
    status = 404
    title = _("Unknown order")


class MerchantInactive(PaymentsError):
    status = 403
    title = _("This coffee machine does not take payments")


class DeviceUnavailable(PaymentsError):
    status = 409
    title = _("This coffee machine is not available")


class DeviceOffline(PaymentsError):
    """The machine has a token but has not called the machine API for DEVICE_OFFLINE_AFTER_SECONDS:
    powered off or cut off, it could not see the payment. 409 like staff's own offline, not 503:
    the server is fine, and an ingress may replace a 503 with a page of its own."""

    status = 409
    title = _("This coffee machine is offline")


class OrderConflict(PaymentsError):
    status = 409
    title = _("This order cannot be used")


class DrinkNotOnMenu(PaymentsError):
    status = 404
    title = _("This drink is not on the machine's menu")


class DrinkUnavailable(PaymentsError):
    status = 409
    title = _("This drink is not available")


class PriceMismatch(PaymentsError):
    """An older link's `price` is not the menu's: someone edited it, or the menu changed since."""

    status = 409
    title = _("This QR code's price is not the machine's price")


class IllegalTransition(PaymentsError):
    status = 409
    title = _("This order cannot change that way")
    # For the machine API's 409: what a machine can act on.
    reason = "illegal_transition"

    def __init__(self, *, order_id: str, current: str, target: str) -> None:
        super().__init__(f"order {order_id!r} is {current} and cannot become {target}")
        self.order_id, self.current, self.target = order_id, current, target


class MakeWindowClosed(IllegalTransition):
    """The machine reports starting an order whose vend window has closed (ORDER_MAKE_WINDOW_SECONDS
    after its payment): its money is being returned, the drink must not be made."""

    reason = "make_window_closed"

    def __init__(self, *, order_id: str, current: str, window_seconds: int) -> None:
        super().__init__(order_id=order_id, current=current, target="make_pending")
        self.message = (f"order {order_id!r} was not started within ORDER_MAKE_WINDOW_SECONDS={window_seconds} "
                        f"of its payment and is {current}: its money is returned, do not make the drink")
        self.args = (self.message,)


class RefundNotAllowed(PaymentsError):
    """A staff refund the order does not allow: its status, more than is left, no receipt possible."""

    status = 409
    title = _("This refund cannot be made")


class OrderExpired(PaymentsError):
    status = 410
    title = _("This order has expired")


class LiveShopForTestMachine(PaymentsError):
    """A machine in test mode, whose pages say no real money is taken, got a payment of a shop that
    takes real money: the customer is not sent to pay it (logged as an error where it is raised)."""

    status = 409
    title = _("This test coffee machine cannot take real payments")


class ShopNotConfigured(PaymentsError):
    # The operator's mistake, not the customer's: logged as an error where it is raised.
    status = 503
    title = _("Payments are not available right now")


class DatabaseUnavailable(PaymentsError):
    """The database cannot answer: down, restarting, unreachable, or SQLite locked past its busy
    timeout. Nothing was changed; the customer can try again."""

    status = 503
    title = _("Payments are not available right now")


class ProviderUnavailable(PaymentsError):
    """Timeout, refused connection, 5xx or an unreadable answer: the order stays payable."""

    status = 503
    title = _("The payment service did not answer")

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        # What went wrong technically, for logs and tests; the customer sees only `message`.
        self.detail = detail


class ProviderRejected(PaymentsError):
    """The provider answered 4xx: retrying the same request will not help."""

    status = 502
    title = _("The payment service refused this payment")

    def __init__(self, message: str, *, provider_status: int) -> None:
        super().__init__(message)
        self.provider_status = provider_status

    @property
    def credentials_refused(self) -> bool:
        """401/403: our shop credentials are wrong, an operator's problem, worth retrying later."""
        return self.provider_status in (401, 403)


class NotificationDeferred(PaymentsError):
    """A notification that cannot be read from the provider now (payments/notification_limits.py):
    429, and the provider sends it again, to be read then."""

    status = 429
    title = _("Payments are not available right now")

    def __init__(self, *, retry_after: float) -> None:
        super().__init__("notification not read now: send it again later")
        # Whole seconds for the Retry-After header, at least 1.
        self.retry_after = max(1, math.ceil(retry_after))
