"""The admin site: Django's, refusing malformed ids in an action's selection with a 400.

Django's admin filters `pk__in=<the posted _selected_action values>` unchecked: a value that is not
an id of the model ("abc" for an integer key, a number past its range) raised ValueError or
OverflowError, a 500. Installed as the default site by coffee_payment.apps.AdminConfig.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest


class AdminSite(admin.AdminSite):
    def admin_view(self, view: Callable[..., HttpResponse], cacheable: bool = False) -> Callable[..., HttpResponse]:
        model_admin = getattr(view, "__self__", None)
        if isinstance(model_admin, admin.ModelAdmin):
            view = _refusing_malformed_selection(view, model_admin)
        return super().admin_view(view, cacheable)


def _refusing_malformed_selection(view: Callable[..., HttpResponse], model_admin: admin.ModelAdmin) -> Callable[..., HttpResponse]:
    primary_key = model_admin.model._meta.pk

    @functools.wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "POST":
            for value in request.POST.getlist(ACTION_CHECKBOX_NAME):
                try:
                    # The key field's own conversion and validators (an integer key's range).
                    primary_key.clean(value, None)
                except ValidationError:
                    name = model_admin.model._meta.verbose_name
                    return HttpResponseBadRequest(f"{ACTION_CHECKBOX_NAME}={value[:64]!r} is not the id of a {name}")
        return view(request, *args, **kwargs)

    return checked
