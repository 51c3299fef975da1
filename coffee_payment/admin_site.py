"""The admin site: Django's, refusing malformed ids in an action's selection with a 400, and keeping
every model whose admin declares no scope of its own to superusers.

Django's admin filters `pk__in=<the posted _selected_action values>` unchecked: a value that is not
an id of the model ("abc" for an integer key, a number past its range) raised ValueError or
OverflowError, a 500. No app list beside the pages: their lists fit 1280 px. Installed as the default site by coffee_payment.apps.AdminConfig.

A ModelAdmin with `staff_scope = True` limits what other staff users see itself (the payments app's
merchant scope, payments/admin_mixins.py); any other one registered here, now or later (users,
groups, login attempts), is for superusers only: a staff user cannot make themselves one, nor read
what is not their merchant's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest


class SuperusersOnly:
    """Mixed into a ModelAdmin that declares no scope: only superusers see or change its model."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser and super().has_module_permission(request)  # type: ignore[misc]

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser and super().has_view_permission(request, obj)  # type: ignore[misc]

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return request.user.is_superuser and super().has_add_permission(request, *args)  # type: ignore[misc]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser and super().has_change_permission(request, obj)  # type: ignore[misc]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser and super().has_delete_permission(request, obj)  # type: ignore[misc]


class AdminSite(admin.AdminSite):
    # The app list beside every page takes 300 px of a 1280 px laptop: the orders list would scroll
    # sideways (tests/integration/test_admin_browser.py). The breadcrumbs and the index lead there.
    enable_nav_sidebar = False

    def register(self, model_or_iterable: Any, admin_class: type[admin.ModelAdmin] | None = None,
                 **options: Any) -> None:
        admin_class = admin_class or admin.ModelAdmin
        if not getattr(admin_class, "staff_scope", False):
            admin_class = type(admin_class.__name__, (SuperusersOnly, admin_class), {"__module__": admin_class.__module__})
        super().register(model_or_iterable, admin_class, **options)

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
