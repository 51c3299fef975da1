"""The admin in the staff's language and the machine's time: every heading, column, label, help text,
filter and action of every payments admin page in Russian, and times in each machine's zone, named."""

from __future__ import annotations

import datetime
import html
from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib import admin
from django.test import Client

from payments.admin_mixins import MerchantScoped
from payments.models import Device, Merchant, Order, OrphanPayment
from tests.payments.test_admin_scope import admin_urls
from tests.payments.test_customer_language import LATIN, english_left

pytestmark = pytest.mark.django_db
RU = {"HTTP_ACCEPT_LANGUAGE": "ru"}
# What an admin page shows that is not a text of ours: the example of a time zone name in its help
# text, the admin's own "ID", the token header's scheme, a language's own name, the keys Django's own
# Russian names ("Control" or "Command" on a Mac).
NOT_WORDS = frozenset({"Europe", "Moscow", "ID", "Authorization", "Bearer", "English", "Control", "Command", "Mac",
                       "UTC"})


class Chrome(HTMLParser):
    """The texts of a page that are the admin's, not the data: headings, column headers, labels, help
    texts, filter titles, breadcrumbs, buttons and the actions' names."""

    TAGS = {"title", "h1", "h2", "h3", "th", "label", "summary", "option", "legend"}

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        classes = set((values.get("class") or "").split())
        if tag in self.TAGS or classes & {"help", "breadcrumbs", "addlink", "paginator"}:
            self._open.append(tag)
        elif self._open:
            self._open.append(tag)
        if tag == "input" and values.get("type") == "submit" and values.get("value"):
            self.texts.append(values["value"] or "")

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open and data.strip():
            self.texts.append(html.unescape(data.strip()))


def chrome_of(page: str, *, data: set[str]) -> list[str]:
    parser = Chrome()
    # Options of the data's own choices (machines, merchants) and the table's cells are not chrome.
    parser.feed(page)
    return [text for text in parser.texts if text not in data]


@pytest.fixture
def records(order: Order) -> dict[type, Any]:
    orphan = OrphanPayment.objects.create(provider_payment_id="pay-9", shop_id="shop-1", order_id=order.pk,
                                          amount_kopecks=15900, reason="order is failed", provider_status="succeeded")
    return {Merchant: order.merchant, Device: order.device, Order: order, OrphanPayment: orphan,
            admin.site._registry[Order].model: order}


def test_every_payments_admin_page_reads_in_russian(admin_client: Client, records: dict[type, Any]) -> None:
    order = records[Order]
    data = {str(order.merchant), str(order.device), order.device.device_uuid, order.merchant.name, "Test Coffee",
            "machine-1 (Lobby)", "Lobby", "Cappuccino", "Espresso", "Latte", "shop-1", "pay-9", order.pk, str(order),
            "admin"}  # the superuser's name, among the staff to choose
    data_words = {word for text in data for word in LATIN.findall(text)}
    untranslated = {}
    for model_admin in admin.site._registry.values():
        if not isinstance(model_admin, MerchantScoped):
            continue  # Django's own (users, groups) and django-axes' come translated
        obj = records.get(model_admin.model) or (order if issubclass(model_admin.model, Order) else None)
        for url in admin_urls(model_admin, obj):
            if url.endswith(".csv") or "/delete/" in url:
                continue
            response = admin_client.get(url, follow=True, **RU)
            if response.status_code == 403:  # a page nobody may use (adding orders)
                continue
            page = response.content.decode()
            words = sorted({word for text in chrome_of(page, data=data)
                            for word in english_left(text, allowed=NOT_WORDS | data_words)})
            if words:
                untranslated[url] = words
    assert untranslated == {}


def test_the_lists_title_and_columns_are_russian(admin_client: Client, order: Order) -> None:
    page = admin_client.get("/admin/payments/order/", **RU).content.decode()
    assert "Выберите заказ для изменения" in page
    headers = [text for text in chrome_of(page, data=set()) if text]
    assert {"Номер заказа", "Создан", "Автомат", "Напиток", "Цена", "Статус", "Оплачен"} <= set(headers), headers
    machines = admin_client.get("/admin/payments/device/", **RU).content.decode()
    assert "Выберите автомат для изменения" in machines and "Выдать автомату новый ключ доступа" in machines


def test_times_are_the_machines_with_the_zone_named(admin_client: Client, order: Order) -> None:
    at = datetime.datetime(2026, 12, 7, 11, 5, tzinfo=datetime.UTC)
    Order.objects.filter(pk=order.pk).update(created_at=at, paid_at=at)
    listed = admin_client.get("/admin/payments/order/", **RU).content.decode()
    assert "07.12.2026 14:05 MSK" in listed  # machine-1 stands in Moscow
    assert "2026-12-07 14:05 MSK" in admin_client.get("/admin/payments/order/").content.decode()
    Device.objects.filter(pk=order.device_id).update(time_zone="Asia/Vladivostok")
    listed = admin_client.get("/admin/payments/order/", **RU).content.decode()
    assert "07.12.2026 21:05 +10" in listed and "MSK" not in listed.split('id="result_list"')[1]
    page = admin_client.get(f"/admin/payments/order/{order.pk}/change/", **RU).content.decode()
    assert "07.12.2026 21:05 +10" in page
    # Times that belong to no machine (a merchant's creation) are the server's, named too.
    merchant = admin_client.get(f"/admin/payments/merchant/{order.merchant_id}/change/", **RU).content.decode()
    assert "UTC" in merchant or "Создан" not in merchant
