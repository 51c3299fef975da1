"""Every refusal a customer can meet comes out whole in Russian, from the one catalogue.

Found, not listed: every PaymentsError subclass and every place in payments/ that builds one is
read from the code, so a refusal added anywhere is checked without touching this file. The only
list is what customers never see (the machine API's and the provider's technical messages).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from babel.messages.pofile import read_po
from django.test import AsyncClient, Client, RequestFactory
from django.urls import path
from django.utils import translation

import payments
from payments import views
from payments.errors import IllegalTransition, MakeWindowClosed, NotificationDeferred, PaymentsError
from payments.forms import ScanForm
from payments.models import Device, MenuItem
from tests.payments.conftest import scan_parameters
from tests.payments.test_customer_pages import text_of

PAYMENTS = Path(payments.__file__).parent
CATALOGUE = PAYMENTS / "locale" / "ru" / "LC_MESSAGES" / "django.po"
RU = {"headers": {"Accept-Language": "ru-RU,ru;q=0.9"}}
# A run of Latin letters: an English word left in a Russian text.
LATIN = re.compile(r"[A-Za-z]+")
# Latin a Russian text may carry: "QR-код" and "cookie" (as Russian browsers write them), and the QR
# link's parameter names, which a refusal quotes so that whoever prints the codes finds the culprit.
ALLOWED = frozenset({"QR", "cookie", *ScanForm.base_fields})
PLACEHOLDER = re.compile(r"%\((\w+)\)([sdr])")
# Built only for machines, the provider and staff, never shown on a customer page: the machine
# API's and the provider notification's technical messages (docs/payments.md: they stay English).
NOT_FOR_CUSTOMERS = {
    "payments.json_input": None,  # the whole module
    "payments.machine_api": None,
    "payments.notification_limits": None,  # the provider's notifications: 429 for it to send again
    "payments.forms": {"menu_parse", "_menu_item", "_menu_number", "_menu_receipt_fields"},
    "payments.provider": {"notification_parse", "_provider_id"},
}
# Raised with the order's statuses for machines, staff and reconciliation; a customer's payment
# that meets one goes to the status page instead (services.order_payment_start). MakeWindowClosed:
# the machine's late start (its 409 in the machine API). NotificationDeferred: the webhook's 429.
NOT_CUSTOMER_CLASSES = {IllegalTransition, MakeWindowClosed, NotificationDeferred}
GETTEXT = {"_", "gettext", "gettext_lazy", "ngettext", "pgettext"}


def english_left(text: str, *, allowed: frozenset[str] = ALLOWED) -> list[str]:
    return sorted({word for word in LATIN.findall(text) if word not in allowed})


def error_classes() -> set[type[PaymentsError]]:
    """PaymentsError and every subclass, wherever in payments/ it is defined."""
    for module in pkgutil.walk_packages(payments.__path__, "payments."):
        if ".migrations" not in module.name:
            importlib.import_module(module.name)
    found, todo = set(), [PaymentsError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


@dataclass(frozen=True)
class Refusal:
    """One place that builds a customer error, and the catalogue messages it can carry."""

    where: str
    cls: type[PaymentsError]
    msgids: tuple[str, ...] | None  # None: not a catalogue message


def _msgids(node: ast.expr, module: ast.Module) -> tuple[str, ...] | None:
    """The catalogue messages an expression evaluates to, or None if it is not a catalogue message."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return _msgids(node.left, module)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id in GETTEXT:
            first = node.args[0] if node.args else None
            return (first.value,) if isinstance(first, ast.Constant) and isinstance(first.value, str) else None
        # A helper of the module that returns a catalogue message on every path (forms._scan_refusal).
        helper = next((f for f in module.body if isinstance(f, ast.FunctionDef) and f.name == node.func.id), None)
        if helper is not None:
            returns = [r.value for r in ast.walk(helper) if isinstance(r, ast.Return) and r.value is not None]
            found = [_msgids(value, module) for value in returns]
            if found and all(ids is not None for ids in found):
                return tuple(msgid for ids in found for msgid in ids)  # type: ignore[union-attr]
    if isinstance(node, ast.Name):
        # A module constant: _UNREADABLE = gettext_lazy("...").
        for statement in module.body:
            if isinstance(statement, ast.Assign) and any(getattr(t, "id", None) == node.id for t in statement.targets):
                return _msgids(statement.value, module)
    return None


def refusals() -> Iterator[Refusal]:
    """Every construction of a PaymentsError subclass in payments/ outside NOT_FOR_CUSTOMERS."""
    classes = {cls.__name__: cls for cls in error_classes()}
    for path in sorted(PAYMENTS.rglob("*.py")):
        name = ".".join(path.relative_to(PAYMENTS.parent).with_suffix("").parts)
        if ".migrations." in name or name == "payments.errors" or NOT_FOR_CUSTOMERS.get(name, ()) is None:
            continue
        module = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(module):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if function.name in NOT_FOR_CUSTOMERS.get(name, ()):
                continue
            for call in ast.walk(function):
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in classes:
                    cls = classes[call.func.id]
                    if cls in NOT_CUSTOMER_CLASSES:
                        continue
                    msgids = _msgids(call.args[0], module) if call.args else None
                    yield Refusal(where=f"{name}.{function.name}:{call.lineno}", cls=cls, msgids=msgids)


def russian_catalogue() -> dict[str, str]:
    with CATALOGUE.open("rb") as po_file:
        return {message.id: message.string for message in read_po(po_file) if message.id and not message.pluralizable}


def test_every_russian_text_in_the_catalogue_is_russian() -> None:
    left = {msgid: english_left(PLACEHOLDER.sub("", text)) for msgid, text in russian_catalogue().items()}
    assert {msgid: words for msgid, words in left.items() if words} == {}


def test_every_error_class_has_a_translated_title() -> None:
    with translation.override("ru"):
        titles = {cls.__name__: str(cls.title) for cls in error_classes()}
    assert {name: title for name, title in titles.items() if english_left(title)} == {}


def test_every_refusal_customers_can_meet_is_built_with_a_catalogue_message() -> None:
    found = list(refusals())
    assert [refusal.where for refusal in found if not refusal.msgids] == [], "wrap these messages in _()"
    # A class built nowhere outside the machine API would be a refusal this test cannot see.
    assert error_classes() - {refusal.cls for refusal in found} - NOT_CUSTOMER_CLASSES - {PaymentsError} == set()


def _sample(msgid: str) -> str:
    """The Russian message with every placeholder filled with a number (values are not words)."""
    with translation.override("ru"):
        text = translation.gettext(msgid)
    values = {name: 42 for name, _ in PLACEHOLDER.findall(msgid)}
    return text % values if values else text


@pytest.mark.parametrize("refusal", list(refusals()), ids=lambda refusal: refusal.where)
def test_every_refusal_renders_in_russian_without_english(refusal: Refusal) -> None:
    request = RequestFactory().get("/v1/pay", HTTP_ACCEPT_LANGUAGE="ru")
    for msgid in refusal.msgids or pytest.fail(f"{refusal.where}: not a catalogue message"):
        error = refusal.cls.__new__(refusal.cls)
        PaymentsError.__init__(error, _sample(msgid))
        with translation.override("ru"):
            page = text_of(views._error_page(request, error).content)
        assert english_left(page) == [], f"{refusal.where}: {page}"


# The refusals a newcomer met, through the real views ------------------------------------------

ORDER_ID = scan_parameters()["order_id"]


def qr(**changes: str | None) -> str:
    params = {"deviceUuid": "machine-1", "orderId": ORDER_ID, "drinkNo": "2", "size": "2", **changes}
    return "/v1/pay?" + urlencode({key: value for key, value in params.items() if value is not None})


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("changes", "status", "russian", "echoed"),
    [
        ({"size": "4"}, 400, "размер (size='4') — не одно из значений 1 (маленький), 2 (средний), 3 (большой)", ()),
        ({"drinkNo": "abc"}, 400, "номер напитка (drinkNo='abc') — не целое число", ("abc",)),
        ({"size": None}, 400, "нет параметра «размер» (size)", ()),
        ({"deviceUuid": "machine-9"}, 404, "Кофемашины 'machine-9' нет", ("machine",)),
        ({"drinkNo": "1", "size": "1", "price": "100"}, 409, "указано 1,00 ₽, а Espresso (маленький) стоит на этой "
         "кофемашине 99,00 ₽", ("Espresso",)),
        ({"drinkNo": "3", "size": "3"}, 409, "Latte (большой) сейчас недоступен", ("Latte",)),
    ],
)
async def test_a_russian_customer_gets_each_refusal_whole_in_russian(
    device: Device, changes: dict[str, str | None], status: int, russian: str, echoed: tuple[str, ...]
) -> None:
    response = await AsyncClient().get(qr(**changes), **RU)
    page = text_of(response.content)
    assert response.status_code == status and russian in page, page
    menu = {name async for name in MenuItem.objects.values_list("drink_name", flat=True)}
    assert english_left(page, allowed=ALLOWED | menu | set(echoed)) == [], page


def test_a_text_with_english_in_it_is_found() -> None:
    assert english_left("size='4' is not one of 1 (small)") == ["is", "not", "of", "one", "small"]
    assert english_left("В этом QR-коде размер (size='4')") == []


@pytest.mark.django_db(transaction=True)
async def test_djangos_own_refusals_are_customer_pages_in_russian(order: Any) -> None:
    """A path cut short, an unknown Host, a Pay form without its cookie: Django answers them before
    any view; each is the error page, in Russian, with the way back where there is an order."""
    missing = await AsyncClient().get("/v1/pa", **RU)
    unknown_host = await AsyncClient().get(qr(), headers={**RU["headers"], "Host": "elsewhere.example"})
    stale_form = await AsyncClient(enforce_csrf_checks=True).post(f"/v1/orders/{ORDER_ID}/payment", **RU)
    for response, status, russian in ((missing, 404, "Такой страницы нет"),
                                      (unknown_host, 400, "Эта ссылка ведёт не к этому сервису"),
                                      (stale_form, 403, "Страница устарела")):
        page = text_of(response.content)
        assert response.status_code == status and russian in page, page
        assert english_left(page) == [], page
    assert f'href="/v1/orders/{ORDER_ID}"' in stale_form.content.decode()


def test_a_bug_is_a_customer_page_in_russian(settings: Any) -> None:
    settings.ROOT_URLCONF = __name__
    with translation.override(None):  # a sync request's language would outlive it in this thread
        response = Client(raise_request_exception=False).get("/boom", HTTP_ACCEPT_LANGUAGE="ru")
    page = text_of(response.content)
    assert response.status_code == 500 and "У нас что-то пошло не так" in page and english_left(page) == []


def _boom(request: Any) -> None:
    raise RuntimeError("a bug")


# The URLconf of test_a_bug_is_a_customer_page_in_russian.
urlpatterns = [path("boom", _boom)]
handler500 = "payments.views.server_error"
