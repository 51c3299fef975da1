"""Sales per machine and per local day: the figures, the machine's own day, one query a page, the
admin report and its CSV as a spreadsheet reads it."""

from __future__ import annotations

import csv
import datetime
import io
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from payments import sales
from payments.models import Device, Merchant, Order, OrderStatus

# The sales are summed from orders set up in their final states, behind the services (no event log).
pytestmark = [pytest.mark.django_db, pytest.mark.forged_status]
S = OrderStatus
UTC = datetime.UTC
DAY = datetime.date(2026, 12, 7)


def sale(device: Device, number: int, at: datetime.datetime, status: str, *, price: int = 15900, refunded: int = 0,
         two_stage: bool = False, test: bool = False) -> Order:
    order = Order.objects.create(
        id=f"{device.device_uuid}-{number}", device=device, merchant=device.merchant, drink_number=2,
        drink_name="Cappuccino", size=2, price_kopecks=price, status=status, expires_at=at, two_stage=two_stage,
        refunded_kopecks=refunded, test=test)
    Order.objects.filter(pk=order.pk).update(created_at=at)  # auto_now_add ignores a given time
    return order


@pytest.fixture
def fleet(device: Device) -> dict[str, Device]:
    """machine-1 in Moscow (UTC+3) and machine-far in Vladivostok (UTC+10), another merchant's."""
    other = Merchant.objects.create(name="Far Coffee", contact_email="far@example.com", shop_id="shop-far",
                                    active_until=DAY + datetime.timedelta(days=365))
    far = Device.objects.create(device_uuid="machine-far", merchant=other, location="Port",
                                time_zone="Asia/Vladivostok")
    return {"moscow": device, "far": far}


def figures(rows: list[sales.Row]) -> dict[tuple[str, datetime.date], dict[str, int]]:
    return {(row.machine, row.day): {**row.figures, "revenue": row.revenue} for row in rows}


def test_each_order_counts_on_its_machines_local_day(fleet: dict[str, Device]) -> None:
    moscow, far = fleet["moscow"], fleet["far"]
    # 21:30 UTC on the 6th is 00:30 on the 7th in Moscow; 13:30 UTC on the 7th is 23:30 in Vladivostok,
    # 14:30 UTC already the 8th there.
    sale(moscow, 1, datetime.datetime(2026, 12, 6, 20, 30, tzinfo=UTC), S.SUCCESSFUL)
    sale(moscow, 2, datetime.datetime(2026, 12, 6, 21, 30, tzinfo=UTC), S.SUCCESSFUL)
    sale(far, 3, datetime.datetime(2026, 12, 7, 13, 30, tzinfo=UTC), S.SUCCESSFUL)
    sale(far, 4, datetime.datetime(2026, 12, 7, 14, 30, tzinfo=UTC), S.SUCCESSFUL)
    page = sales.sales_page(Order.objects.all(), sales.Selection(start=DAY, end=DAY), page=1)
    assert {key: value["orders"] for key, value in figures(page.rows).items()} == {
        ("machine-1", DAY): 1, ("machine-far", DAY): 1}
    wider = sales.sales_page(Order.objects.all(), sales.Selection(start=DAY - datetime.timedelta(days=1),
                                                                 end=DAY + datetime.timedelta(days=1)), page=1)
    # Newest day first, then by machine.
    assert [(row.day.day, row.machine) for row in wider.rows] == [
        (8, "machine-far"), (7, "machine-1"), (7, "machine-far"), (6, "machine-1")]


def test_figures_count_what_was_paid_made_refunded_and_kept(fleet: dict[str, Device]) -> None:
    moscow = fleet["moscow"]
    at = datetime.datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    statuses = [
        (S.CREATED, {}), (S.NOT_PAID, {}), (S.FAILED, {}),  # never paid
        (S.SUCCESSFUL, {}), (S.MANUAL_MAKE, {"price": 9900}),  # made and charged
        (S.REFUNDED, {"refunded": 15900}),  # charged, all of it back
        (S.SUCCESSFUL, {"refunded": 5000}),  # charged, part of it back (a staff refund)
        (S.HELD, {"two_stage": True}), (S.RELEASED, {"two_stage": True}),  # held, never charged
        (S.SUCCESSFUL, {"two_stage": True}),  # the hold captured
        (S.SUCCESSFUL, {"test": True}),  # a test machine's: no real money, no sale
    ]
    for number, (status, extra) in enumerate(statuses):
        sale(moscow, number, at, status, **extra)
    page = sales.sales_page(Order.objects.all(), sales.Selection(start=DAY, end=DAY), page=1)
    charged = 15900 + 9900 + 15900 + 15900 + 15900
    assert figures(page.rows) == {("machine-1", DAY): {
        "orders": 10, "paid": 7, "made": 4, "refunded": 2, "charged": charged, "refunds": 20900,
        "revenue": charged - 20900}}
    assert page.count == 1 and page.totals.figures == page.rows[0].figures
    assert list(sales.row_values(page.rows[0]))[-3:] == [Decimal("735.00"), Decimal("209.00"), Decimal("526.00")]


def test_a_page_is_one_query_with_the_selections_count_and_totals(fleet: dict[str, Device], monkeypatch: Any) -> None:
    monkeypatch.setattr(sales, "PAGE_ROWS", 2)
    for number in range(5):
        day = datetime.datetime(2026, 12, 3 + number, 9, 0, tzinfo=UTC)
        sale(fleet["moscow"], number, day, S.SUCCESSFUL, price=10000 + number)
    selection = sales.Selection(start=datetime.date(2026, 12, 1), end=DAY)
    with CaptureQueriesContext(connection) as queries:
        page = sales.sales_page(Order.objects.all(), selection, page=2)
    assert [query["sql"].split()[0] for query in queries if "SELECT" in query["sql"]] == ["SELECT"]
    assert [row.day.day for row in page.rows] == [5, 4] and page.count == 5
    assert page.totals.figures["charged"] == sum(10000 + number for number in range(5))
    past = sales.sales_page(Order.objects.all(), selection, page=9)
    assert past.rows == [] and past.count == 5 and past.totals.figures["orders"] == 5


def test_a_merchant_or_a_machine_narrows_the_selection(fleet: dict[str, Device]) -> None:
    at = datetime.datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
    sale(fleet["moscow"], 1, at, S.SUCCESSFUL)
    sale(fleet["far"], 2, at, S.SUCCESSFUL)
    for selection, machines in [
        (sales.Selection(start=DAY, end=DAY, merchant_id=fleet["far"].merchant_id), {"machine-far"}),
        (sales.Selection(start=DAY, end=DAY, device_id=fleet["moscow"].pk), {"machine-1"}),
    ]:
        assert {row.machine for row in sales.sales_page(Order.objects.all(), selection, page=1).rows} == machines


# The admin report ------------------------------------------------------------------------------------


def test_the_report_is_linked_from_the_index_and_filters_by_dates(admin_client: Any, fleet: dict[str, Device]) -> None:
    sale(fleet["moscow"], 1, datetime.datetime(2026, 12, 7, 5, 0, tzinfo=UTC), S.SUCCESSFUL)
    index = admin_client.get("/admin/", HTTP_ACCEPT_LANGUAGE="ru").content.decode()
    assert 'href="/admin/payments/sales/"' in index and "Продажи по автоматам и дням" in index
    page = admin_client.get("/admin/payments/sales/?start=2026-12-07&end=2026-12-07", HTTP_ACCEPT_LANGUAGE="ru")
    text = page.content.decode()
    assert page.status_code == 200 and "machine-1" in text and "159,00" in text and "Выручка, ₽" in text
    # The row links to the machine's orders of that Moscow day.
    assert ("/admin/payments/order/?machine=machine-1&amp;created_at__gte=2026-12-07T00%3A00%3A00%2B03%3A00"
            "&amp;created_at__lt=2026-12-08T00%3A00%3A00%2B03%3A00") in text
    empty = admin_client.get("/admin/payments/sales/?start=2026-12-08&end=2026-12-09").content.decode()
    assert "machine-1" not in empty and "No orders on these days." in empty


@pytest.mark.parametrize(("query", "refusal"), [
    ("start=2026-12-08&end=2026-12-07", "The first day (Dec. 8, 2026) is after the last (Dec. 7, 2026)."),
    ("start=2025-01-01&end=2026-12-07", "Choose at most 366 days."),
    ("start=yesterday", "Enter a valid date."),
])
def test_a_bad_range_is_refused_naming_it(admin_client: Any, query: str, refusal: str) -> None:
    response = admin_client.get(f"/admin/payments/sales/?{query}")
    assert response.status_code == 200 and refusal in response.content.decode()
    assert 'id="result_list"' not in response.content.decode()


def export(admin_client: Any, language: str, query: str = "start=2026-12-07&end=2026-12-07") -> tuple[Any, list[list[str]]]:
    response = admin_client.get(f"/admin/payments/sales/export.csv?{query}", HTTP_ACCEPT_LANGUAGE=language)
    assert response.status_code == 200, response.content[:300]
    body = response.content.decode("utf-8")
    assert body.startswith("\ufeff")  # Excel reads UTF-8 only after a byte order mark
    delimiter = ";" if language == "ru" else ","
    return response, list(csv.reader(io.StringIO(body[1:]), delimiter=delimiter))


def test_the_csv_opens_in_a_russian_spreadsheet_and_reads_back_exactly(admin_client: Any, fleet: dict[str, Device]) -> None:
    fleet["moscow"].location = "=HYPERLINK(\"http://evil\")"
    fleet["moscow"].save()
    at = datetime.datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
    sale(fleet["moscow"], 1, at, S.SUCCESSFUL, price=123456)
    sale(fleet["moscow"], 2, at, S.REFUNDED, price=9900, refunded=9900)
    sale(fleet["far"], 3, at, S.SUCCESSFUL, price=5)
    response, table = export(admin_client, "ru")
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="sales-2026-12-07-2026-12-07.csv"'
    assert table[0] == ["день", "автомат", "место", "заказы", "оплачен", "приготовлено", "возвращено", "списано, ₽",
                        "возвраты, ₽", "выручка, ₽"]
    rows = {line[1]: line for line in table[1:]}
    assert rows["machine-1"] == ["2026-12-07", "machine-1", "'=HYPERLINK(\"http://evil\")", "2", "2", "1", "1",
                                 "1333,56", "99,00", "1234,56"]
    # A decimal comma, no grouping: each amount is one number for the spreadsheet, exact to the kopeck.
    assert Decimal(rows["machine-far"][-1].replace(",", ".")) == Decimal("0.05")
    _, english = export(admin_client, "en")
    assert english[0][-1] == "revenue, ₽" and {line[1]: line[-1] for line in english[1:]}["machine-1"] == "1234.56"


def test_an_export_past_its_limit_is_refused_with_the_count(admin_client: Any, fleet: dict[str, Device],
                                                            monkeypatch: Any) -> None:
    monkeypatch.setattr(sales, "EXPORT_MAX_ROWS", 1)
    at = datetime.datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
    sale(fleet["moscow"], 1, at, S.SUCCESSFUL)
    sale(fleet["far"], 2, at, S.SUCCESSFUL)
    response = admin_client.get("/admin/payments/sales/export.csv?start=2026-12-07&end=2026-12-07", follow=True)
    assert "These days have 2 rows; an export holds at most 1" in response.content.decode()
