"""The customer pages in the customer's language and the machine's time zone, with a next step when
an order leads nowhere; the catalogues they are translated from."""

from __future__ import annotations

import datetime
import gettext
import html
import io
import re
import zoneinfo
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import sync_to_async
from babel.messages.extract import DEFAULT_KEYWORDS, extract
from babel.messages.pofile import read_po
from django.core.exceptions import ValidationError
from django.test import AsyncClient
from django.utils import timezone, translation
from django.utils.translation.template import templatize

from payments import services
from payments.models import Device, DeviceText, Order
from tests.payments.conftest import scan_parameters

pytestmark = pytest.mark.django_db(transaction=True)

ORDER_ID = scan_parameters()["order_id"]
QR = "/v1/pay?" + urlencode({"deviceUuid": "machine-1", "orderId": ORDER_ID, "drinkNo": "2", "size": "2"})
RU = {"headers": {"Accept-Language": "ru-RU,ru;q=0.9,en;q=0.5"}}
PAYMENTS = Path(__file__).resolve().parents[2] / "payments"
LOCALE = PAYMENTS / "locale"


def text_of(content: bytes) -> str:
    """The page's text with tags removed and runs of white space as one space."""
    body = content.decode().split("<body>", 1)[-1]
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body))).replace("\xa0", " ")


async def test_the_qr_page_speaks_russian_with_roubles_and_the_machines_time(device: Device) -> None:
    await Device.objects.filter(pk=device.pk).aupdate(time_zone="Asia/Vladivostok")
    response = await AsyncClient().get(QR, **RU)
    page = text_of(response.content)
    assert response.status_code == 200 and response["Content-Language"] == "ru"
    assert '<html lang="ru">' in response.content.decode()
    assert "Оплатить" in page and "Средний · напиток № 2" in page and "159,00 ₽" in page
    order = await Order.objects.aget(pk=ORDER_ID)
    local = timezone.localtime(order.expires_at, zoneinfo.ZoneInfo("Asia/Vladivostok"))
    # Russian's TIME_FORMAT, "G:i": no leading zero before 10 a.m. ("0:01").
    assert f"Оплатите до {local.hour}:{local:%M} (+10)." in page, page


async def test_without_russian_in_accept_language_the_page_is_english(device: Device) -> None:
    for header in ({}, {"Accept-Language": "de-DE,de;q=0.9"}, {"Accept-Language": "en-GB"}):
        response = await AsyncClient().get(QR, headers=header)
        page = text_of(response.content)
        assert response["Content-Language"] == "en", header
        assert "Pay" in page and "Medium · drink no. 2" in page and "159.00 ₽" in page
        order = await Order.objects.aget(pk=ORDER_ID)
        local = timezone.localtime(order.expires_at, zoneinfo.ZoneInfo("Europe/Moscow"))  # the default zone
        assert f"({local:%Z})." in page and "Pay before" in page and "Оплатить" not in page


async def test_error_pages_are_translated_and_say_what_to_do_next(device: Device) -> None:
    response = await AsyncClient().get(QR.replace("machine-1", "machine-9"), **RU)
    page = text_of(response.content)
    assert response.status_code == 404 and "Неизвестная кофемашина" in page
    assert "выберите его на кофемашине и отсканируйте новый QR-код" in page
    response = await AsyncClient().get(QR.replace("drinkNo=2", "drinkNo=7"), **RU)
    assert "На этой кофемашине нет напитка № 7 размера «средний»" in text_of(response.content)


async def test_a_silent_machine_gets_the_offline_page_in_the_customers_language(device: Device) -> None:
    """A machine with a token that has not called for DEVICE_OFFLINE_AFTER_SECONDS: 409, nothing written."""
    await sync_to_async(services.device_credential_issue)(device_id=device.pk)
    russian = await AsyncClient().get(QR, **RU)
    assert russian.status_code == 409 and russian["Content-Language"] == "ru"
    page = text_of(russian.content)
    assert "Эта кофемашина не на связи" in page and "Заказ не создан, деньги не списаны" in page
    english = await AsyncClient().get(QR)
    assert english.status_code == 409 and "This coffee machine is offline" in text_of(english.content)
    assert "Nothing was ordered or charged" in text_of(english.content)
    assert not await Order.objects.aexists()


async def test_a_pending_order_says_it_is_being_confirmed_and_offers_no_second_payment(order: Order) -> None:
    response = await AsyncClient().get(f"/v1/orders/{order.pk}", **RU)
    assert re.search(r'<form [^>]*id="pay">', response.content.decode()), "an order not paid yet has Pay"
    # The provider is not reachable in this test: the page answers what it has, pending.
    await sync_to_async(services.order_mark_pending)(order_id=order.pk, provider_payment_id="pay-1")
    response = await AsyncClient().get(f"/v1/orders/{order.pk}", **RU)
    content = response.content.decode()
    assert re.search(r'<form [^>]*id="pay" hidden>', content), "the payment is with the provider already"
    shown = re.findall(r'<p data-statuses="[^"]*">\s*([^<]+)', content)
    assert [" ".join(text.split()) for text in shown] == [
        "Платёжный сервис подтверждает оплату: это займёт несколько секунд. Не завершили оплату? Отсканируйте "
        "QR-код на кофемашине ещё раз."]
    # Scanning again leads back to the payment.
    assert re.search(r'<form method="post" action="/v1/orders/[^"]+/payment">', (await AsyncClient().get(QR)).content.decode())


@pytest.mark.forged_status
async def test_a_paid_order_says_the_drink_is_being_made(order: Order) -> None:
    await Order.objects.filter(pk=order.pk).aupdate(status="paid")
    content = (await AsyncClient().get(f"/v1/orders/{order.pk}", **RU)).content.decode()
    shown = re.findall(r'<p data-statuses="[^"]*">\s*([^<]+)', content)
    assert [" ".join(text.split()) for text in shown] == [
        "Оплачено: кофемашина готовит ваш напиток. Заберите его, когда он будет готов."]


@pytest.mark.forged_status
async def test_a_cancelled_order_shows_the_next_step_and_no_pay_button(order: Order) -> None:
    await Order.objects.filter(pk=order.pk).aupdate(status="not_paid")
    response = await AsyncClient().get(f"/v1/orders/{order.pk}", **RU)
    content = response.content.decode()
    assert re.search(r'<form [^>]*id="pay" hidden>', content)
    shown = re.findall(r'<p data-statuses="[^"]*">\s*([^<]+)', content)
    assert [text.strip() for text in shown] == [
        "Оплата не прошла: деньги не списаны.",
        "Чтобы попробовать ещё раз или выбрать другой напиток, выберите его на кофемашине и отсканируйте новый QR-код.",
    ]
    assert "Не оплачено" in text_of(response.content)


def shown_next_steps(content: str) -> list[str]:
    return [text.strip() for text in re.findall(r'<p data-statuses="[^"]*">\s*([^<]+)', content)]


@pytest.mark.parametrize(("two_stage", "status", "money"), [
    (False, "refunded", "Напиток не приготовлен: деньги вернутся на карту."),
    (False, "refund_pending", "Напиток не приготовлен: деньги вернутся на карту."),
    (True, "released", "Напиток не приготовлен: заблокированная на карте сумма разблокируется, деньги не списаны."),
    (True, "cancel_pending", "Напиток не приготовлен: заблокированная на карте сумма разблокируется, деньги не списаны."),
])
@pytest.mark.forged_status
async def test_a_drink_not_made_says_how_the_money_comes_back_for_its_kind_of_payment(
    order: Order, two_stage: bool, status: str, money: str
) -> None:
    """A refund is not a released hold: a single-stage customer never reads about a held amount."""
    await Order.objects.filter(pk=order.pk).aupdate(status=status, two_stage=two_stage)
    content = (await AsyncClient().get(f"/v1/orders/{order.pk}", **RU)).content.decode()
    shown = shown_next_steps(content)
    assert shown[0] == money and any("заблок" in text for text in shown) == two_stage


async def test_a_test_machines_order_pages_say_no_real_money_is_taken(device: Device) -> None:
    await Device.objects.filter(pk=device.pk).aupdate(status="test")
    order_page = text_of((await AsyncClient().get(QR, **RU)).content)
    status_page = text_of((await AsyncClient().get(f"/v1/orders/{ORDER_ID}", **RU)).content)
    for page in (order_page, status_page):
        assert "Тестовый режим" in page and "настоящие деньги не списываются" in page
    english = text_of((await AsyncClient().get(f"/v1/orders/{ORDER_ID}")).content)
    assert "no real money is taken" in english
    await Device.objects.filter(pk=device.pk).aupdate(status="online")
    online = text_of((await AsyncClient().get(QR.replace(ORDER_ID, "o-online"), **RU)).content)
    assert "Тестовый режим" not in online


@pytest.mark.forged_status
async def test_the_merchants_texts_follow_the_customers_language_then_fall_back(device: Device) -> None:
    await Device.objects.filter(pk=device.pk).aupdate(welcome_text="Welcome!", thank_you_text="")
    await DeviceText.objects.acreate(device=device, language="ru", welcome_text="Добро пожаловать!",
                                     thank_you_text="Спасибо, что выбрали нас!")
    await AsyncClient().get(QR)
    await Order.objects.filter(pk=ORDER_ID).aupdate(status="successful")
    russian = [text_of((await AsyncClient().get(url, **RU)).content) for url in (QR, f"/v1/orders/{ORDER_ID}")]
    english = [text_of((await AsyncClient().get(url)).content) for url in (QR, f"/v1/orders/{ORDER_ID}")]
    assert "Добро пожаловать!" in russian[0] and "Welcome!" not in russian[0]
    assert "Спасибо, что выбрали нас!" in russian[1]
    # No English text of their own: the machine's text for every language, else the catalogue's.
    assert "Welcome!" in english[0] and "Enjoy your drink!" in english[1]
    await DeviceText.objects.filter(device=device).aupdate(welcome_text="")
    assert "Welcome!" in text_of((await AsyncClient().get(QR, **RU)).content)


async def test_an_expired_order_says_so_on_the_status_page(device: Device, settings: Any) -> None:
    long_ago = timezone.now() - datetime.timedelta(minutes=settings.ORDER_EXPIRY_MINUTES + 1)
    await sync_to_async(services.order_create)(**scan_parameters(), now=long_ago)
    response = await AsyncClient().get(f"/v1/orders/{ORDER_ID}")
    content = response.content.decode()
    assert 'data-status="expired"' in content and "Expired: please order again on the machine" in content
    assert re.search(r'<form [^>]*id="pay" hidden>', content)
    assert "scan the new QR code" in text_of(response.content)


async def test_the_status_poll_labels_in_the_customers_language(order: Order) -> None:
    response = await AsyncClient().get(f"/v1/order-status/{order.pk}", **RU)
    assert (response.json()["label"], response.json()["size_label"]) == ("Ожидает оплаты", "Средний")
    assert "Accept-Language" in response["Vary"]


@pytest.mark.parametrize("name", ["Mars/Olympus", "../../etc/passwd", "", "europe/moscow "])
def test_a_machines_time_zone_must_be_an_iana_name(device: Device, name: str) -> None:
    device.time_zone = name
    with pytest.raises(ValidationError) as invalid:
        device.full_clean()
    assert "time_zone" in invalid.value.message_dict


def test_a_machine_in_another_zone_is_saved_and_the_default_is_moscow(device: Device) -> None:
    assert device.time_zone == "Europe/Moscow"
    device.time_zone = "Asia/Yekaterinburg"
    device.full_clean()


# The catalogues ------------------------------------------------------------------------------


def test_the_committed_mo_is_compiled_from_the_po_and_nothing_is_left_untranslated() -> None:
    """The .mo files are committed so that a fresh clone needs no gettext tools: each must say what
    its .po says (after editing a .po, `make messages` compiles it)."""
    catalogues = sorted(LOCALE.glob("*/LC_MESSAGES/django.po"))
    assert [path.parts[-3] for path in catalogues] == ["ru"]
    for po_path in catalogues:
        with po_path.open("rb") as po_file:
            po = read_po(po_file)
        with po_path.with_suffix(".mo").open("rb") as mo_file:
            compiled = gettext.GNUTranslations(mo_file)._catalog  # type: ignore[attr-defined]
        expected: dict[object, str] = {}
        for message in po:
            if not message.id:
                continue
            assert not message.fuzzy, f"{po_path}: {message.id!r} is fuzzy"
            if message.pluralizable:
                for index, form in enumerate(message.string):
                    expected[(message.id[0], index)] = form
            else:
                expected[message.id] = message.string
            assert all(message.string if message.pluralizable else [message.string]), f"{message.id!r} untranslated"
        assert {key: value for key, value in compiled.items() if key != ""} == expected, f"{po_path} is not compiled"


def test_no_other_catalogue_overrides_ours() -> None:
    """Django merges every app's catalogue: each of our messages must come out as our translation."""
    with (LOCALE / "ru" / "LC_MESSAGES" / "django.mo").open("rb") as mo_file:
        ours = gettext.GNUTranslations(mo_file)._catalog  # type: ignore[attr-defined]
    with translation.override("ru"):
        wrong = {msgid: translation.gettext(msgid) for msgid, text in ours.items()
                 if isinstance(msgid, str) and msgid and translation.gettext(msgid) != text}
    assert wrong == {}


def test_every_string_marked_for_translation_is_in_the_catalogue() -> None:
    """What `make messages` would extract, without GNU gettext: Django's own template-to-gettext
    step (the one makemessages runs before xgettext), then Babel's Python extractor."""
    keywords = {**DEFAULT_KEYWORDS, "gettext_lazy": None, "gettext_noop": None}  # as makemessages gives xgettext
    marked: set[str] = set()
    for path in sorted(PAYMENTS.rglob("*.py")) + sorted(PAYMENTS.rglob("*.html")):
        source = path.read_text(encoding="utf-8")
        code = templatize(source, origin=str(path)) if path.suffix == ".html" else source
        for _, message, _, _ in extract("python", io.BytesIO(code.encode()), keywords=keywords):
            marked.add(message[0] if isinstance(message, tuple) else message)
    with (LOCALE / "ru" / "LC_MESSAGES" / "django.po").open("rb") as po_file:
        catalogued = {message.id[0] if message.pluralizable else message.id for message in read_po(po_file) if message.id}
    assert marked - catalogued == set(), "run `make messages` and translate the new strings"
    assert catalogued - marked == set(), "the catalogue has strings nothing uses: run `make messages`"
