"""The sales report in the admin: per machine and local day, filtered, paged, and as CSV.

Listed on the admin index through the Sales proxy model, with its own view permission
(payments.view_sales), scoped to the staff user's merchants like every admin page. The sums:
payments.sales.
"""

from __future__ import annotations

import csv
import datetime
import io
import zoneinfo
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.translation import gettext as _, gettext_lazy

from payments import sales
from payments.admin_mixins import MerchantScoped, devices_of, merchants_of
from payments.models import DEFAULT_DEVICE_TIME_ZONE, Order

# A report of at most a year's days: wider ones are two exports.
MAX_DAYS = 366
DEFAULT_DAYS = 7
# Cells a spreadsheet would run as a formula: a machine's location is typed by staff.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class SalesFilterForm(forms.Form):
    start = forms.DateField(label=gettext_lazy("from"), required=False)
    end = forms.DateField(label=gettext_lazy("to"), required=False)
    merchant = forms.ModelChoiceField(label=gettext_lazy("merchant"), queryset=None, required=False)
    machine = forms.ModelChoiceField(label=gettext_lazy("machine"), queryset=None, required=False)

    def __init__(self, *args: Any, user: Any, admin_site: admin.AdminSite, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["merchant"].queryset = merchants_of(user)
        # A fleet has too many machines for a list: typed ahead, through the machines' admin search.
        self.fields["machine"] = forms.ModelChoiceField(
            label=self.fields["machine"].label, queryset=devices_of(user), required=False,
            widget=AutocompleteSelect(Order._meta.get_field("device"), admin_site))

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        today = timezone.localdate(timezone=zoneinfo.ZoneInfo(DEFAULT_DEVICE_TIME_ZONE))
        end = data.get("end") or today
        start = data.get("start") or end - datetime.timedelta(days=DEFAULT_DAYS - 1)
        if start > end:
            raise forms.ValidationError(_("The first day (%(start)s) is after the last (%(end)s).")
                                        % {"start": formats.date_format(start), "end": formats.date_format(end)})
        if (end - start).days >= MAX_DAYS:
            raise forms.ValidationError(_("Choose at most %(days)d days.") % {"days": MAX_DAYS})
        data["start"], data["end"] = start, end
        return data

    def selection(self) -> sales.Selection:
        data = self.cleaned_data
        return sales.Selection(start=data["start"], end=data["end"],
                               merchant_id=data["merchant"].pk if data.get("merchant") else None,
                               device_id=data["machine"].pk if data.get("machine") else None)


def _orders_link(row: sales.Row) -> str:
    """The orders list of the row's machine and local day."""
    zone = zoneinfo.ZoneInfo(row.zone)
    start = datetime.datetime.combine(row.day, datetime.time.min, zone)
    end = datetime.datetime.combine(row.day + datetime.timedelta(days=1), datetime.time.min, zone)
    return reverse("admin:payments_order_changelist") + "?" + urlencode(
        {"machine": row.machine, "created_at__gte": start.isoformat(), "created_at__lt": end.isoformat()})


def _cell(text: str) -> str:
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def _number(value: Any) -> str:
    """Whole numbers as they are, roubles with two decimals and the language's decimal separator."""
    if isinstance(value, int):
        return str(value)
    return formats.number_format(value, decimal_pos=2, use_l10n=True, force_grouping=False)


def sales_csv(rows: list[sales.Row]) -> str:
    """The rows as a spreadsheet opens them in the staff's language: a decimal comma goes with `;`
    between cells (Excel's Russian regional settings), a decimal point with `,`."""
    delimiter = ";" if formats.get_format("DECIMAL_SEPARATOR") == "," else ","
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow([_("day"), _("machine"), _("location"), *(str(c.label) for c in sales.COLUMNS),
                     str(sales.REVENUE_LABEL)])
    for row in rows:
        writer.writerow([row.day.isoformat(), _cell(row.machine), _cell(row.location),
                         *(_number(value) for value in sales.row_values(row))])
    return out.getvalue()


class SalesAdmin(MerchantScoped, admin.ModelAdmin):
    """No list, add, change or delete pages: the report and its CSV."""

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path("", self.admin_site.admin_view(self.sales_view), name="%s_%s_changelist" % info),
            path("export.csv", self.admin_site.admin_view(self.export_view), name="%s_%s_export" % info),
        ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _form(self, request: HttpRequest) -> SalesFilterForm:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return SalesFilterForm(request.GET, user=request.user, admin_site=self.admin_site)

    def sales_view(self, request: HttpRequest) -> HttpResponse:
        form = self._form(request)
        page, number = None, _page_number(request)
        if form.is_valid():
            try:
                page = sales.sales_page(self.get_queryset(request), form.selection(), page=number)
            except sales.SalesTooSlow:
                messages.error(request, _("Summing these days took longer than a page may wait: choose fewer days, "
                                          "a merchant or a machine."))
        query = {key: value for key, value in request.GET.items() if key != "page"}
        pages = -(-page.count // sales.PAGE_ROWS) if page else 0
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Sales by machine and day"),
            "form": form,
            "page": page,
            "rows": [(row, list(sales.row_values(row)), _orders_link(row)) for row in page.rows] if page else [],
            "totals": list(sales.row_values(page.totals)) if page else [],
            "headers": [column.label for column in sales.COLUMNS] + [sales.REVENUE_LABEL],
            "number": number,
            "pages": pages,
            "previous": urlencode({**query, "page": number - 1}) if number > 1 else None,
            "next": urlencode({**query, "page": number + 1}) if number < pages else None,
            "export": reverse("admin:payments_sales_export") + "?" + urlencode(query),
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/payments/sales/report.html", context)

    def export_view(self, request: HttpRequest) -> HttpResponse:
        form = self._form(request)
        back = HttpResponseRedirect(reverse("admin:payments_sales_changelist") + "?" + request.GET.urlencode())
        if not form.is_valid():
            return back
        selection = form.selection()
        try:
            rows, _totals = sales.sales_export(self.get_queryset(request), selection)
        except sales.ExportTooLarge as too_large:
            messages.error(request, _("These days have %(rows)d rows; an export holds at most %(max)d: choose fewer "
                                      "days, a merchant or a machine.") % {"rows": too_large.rows,
                                                                           "max": sales.EXPORT_MAX_ROWS})
            return back
        except sales.SalesTooSlow:
            messages.error(request, _("Summing these days took longer than a page may wait: choose fewer days, "
                                      "a merchant or a machine."))
            return back
        # UTF-8 with a byte order mark: Excel reads the file as UTF-8 only with one.
        response = HttpResponse("\ufeff" + sales_csv(rows), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="sales-{selection.start}-{selection.end}.csv"'
        return response


def _page_number(request: HttpRequest) -> int:
    text = request.GET.get("page", "1")
    return int(text) if text.isdigit() and 0 < int(text) < 1_000_000 else 1
