"""What every payments admin page shares: staff see only their merchants' records, and times in the
machine's time zone.

MerchantScoped: a superuser sees everything; any other staff user sees and changes only the records
of the merchants they are linked to (Merchant.staff), and nothing when linked to none. It filters the
admin's queryset, which Django's lists, change, delete and history pages, actions and autocompletes
all start from, and the choices of every merchant and machine field. The admin site makes every
ModelAdmin that declares no scope of its own superusers-only (coffee_payment/admin_site.py).

MachineTime: each time column of a list is shown in its row's machine's time zone, and a change page
in its object's, every time with its zone (the formats in coffee_payment/formats).
"""

from __future__ import annotations

import datetime
import zoneinfo
from collections.abc import Callable, Sequence
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.db import models
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import formats, timezone

from payments.models import Device, Merchant


def merchants_of(user: Any) -> QuerySet[Merchant]:
    """The merchants whose records `user` may see in the admin."""
    return Merchant.objects.all() if user.is_superuser else Merchant.objects.filter(staff=user)


def devices_of(user: Any) -> QuerySet[Device]:
    return Device.objects.all() if user.is_superuser else Device.objects.filter(merchant__in=merchants_of(user))


class MerchantScoped:
    """For ModelAdmins and inlines. `merchant_lookup`: the path from the model to its merchant."""

    # Read by the admin site: this admin limits what staff see itself.
    staff_scope = True
    merchant_lookup = "merchant"

    def merchant_scope(self, request: HttpRequest) -> Q | None:
        """The condition on the model's rows for this user; None: every row (a superuser)."""
        if request.user.is_superuser:
            return None
        return Q(**{f"{self.merchant_lookup}__in": merchants_of(request.user).values("pk")})

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)  # type: ignore[misc]
        scope = self.merchant_scope(request)
        return queryset if scope is None else queryset.filter(scope)

    def formfield_for_foreignkey(self, db_field: models.ForeignKey, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.related_model is Merchant:
            kwargs["queryset"] = merchants_of(request.user)
        elif db_field.related_model is Device:
            kwargs["queryset"] = devices_of(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)  # type: ignore[misc]


def machine_time_text(value: datetime.datetime | None, zone: str | None) -> str | None:
    """`value` in the machine's zone, as the admin shows times: "07.12.2026 14:05 MSK" in Russian."""
    if value is None:
        return None
    local = timezone.localtime(value, zoneinfo.ZoneInfo(zone)) if zone else timezone.localtime(value)
    return formats.localize(local)


class MachineTime:
    """For ModelAdmins of models that belong to a machine: `machine_zone(obj)` names its zone."""

    def machine_zone(self, obj: Any) -> str | None:
        raise NotImplementedError

    def _time_column(self, name: str) -> Callable[[Any], str | None]:
        field = self.model._meta.get_field(name)  # type: ignore[attr-defined]

        @admin.display(description=field.verbose_name, ordering=name)
        def column(obj: Any) -> str | None:
            return machine_time_text(getattr(obj, name), self.machine_zone(obj))

        column.__name__ = name
        return column

    def get_list_display(self, request: HttpRequest) -> Sequence[Any]:
        columns = super().get_list_display(request)  # type: ignore[misc]
        times = {field.name for field in self.model._meta.fields  # type: ignore[attr-defined]
                 if isinstance(field, models.DateTimeField)}
        return [self._time_column(name) if isinstance(name, str) and name in times else name for name in columns]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        obj = self.get_object(request, unquote(object_id))  # type: ignore[attr-defined]
        zone = self.machine_zone(obj) if obj is not None else None
        # The form's times too: shown and read back in the same zone.
        with timezone.override(zoneinfo.ZoneInfo(zone) if zone else None):
            response = super().change_view(request, object_id, form_url, extra_context)  # type: ignore[misc]
            # A TemplateResponse renders after the view returns: render it while the zone is active.
            return response.render() if hasattr(response, "render") else response
