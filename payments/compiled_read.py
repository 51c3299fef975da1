"""Reads whose SQL the ORM compiles once per process, for the polls: each call runs that SQL
through `raw()`, which converts the values with the ORM's own converters. Compiling was the largest
share of a status poll's CPU (bench/results/history.md)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, models

__all__ = ["CompiledRead"]

M = TypeVar("M", bound=models.Model)


class CompiledRead(Generic[M]):
    """`build(**parameters)` returns the queryset; each of its keyword arguments must end up as
    exactly one SQL parameter, unchanged (an exact lookup on a text column). The SQL is the default
    database's, the one database this project has."""

    def __init__(self, build: Callable[..., models.QuerySet[M]]) -> None:
        self._build = build
        self._names = tuple(inspect.signature(build).parameters)

    @functools.cached_property
    def _compiled(self) -> tuple[type[M], str, tuple[str, ...], list[tuple[str, list[Any], Any]]]:
        """(model, SQL, parameter names in the SQL's order, converters of the annotations), on first
        use: never at import."""
        markers = {f"<{name}>": name for name in self._names}
        queryset = self._build(**{name: marker for marker, name in markers.items()}).order_by()
        sql, params = queryset.query.sql_with_params()
        if sorted(map(str, params)) != sorted(markers):
            raise ImproperlyConfigured(f"{self._build!r} compiled to {sql!r} with parameters {params!r}: "
                                       f"each of {self._names} must be one parameter, unchanged")
        # raw() converts the model's columns only: an annotation (a joined datetime on SQLite, say)
        # gets the converters the ORM's own query would give it.
        annotations = list(queryset.query.annotation_select.items())
        compiler = queryset.query.get_compiler(using=DEFAULT_DB_ALIAS)
        converters = compiler.get_converters([expression for _, expression in annotations])
        converted = [(annotations[index][0], functions, expression)
                     for index, (functions, expression) in converters.items()]
        return queryset.model, sql, tuple(markers[param] for param in params), converted

    async def one(self, **parameters: Any) -> M | None:
        """The row of a read by a unique key, as a model instance with the columns the queryset
        selects, or None. In the request's thread, like the ORM's own async reads: compiling may
        ask the database's features."""
        return await sync_to_async(self._one)(parameters)

    def _one(self, parameters: dict[str, Any]) -> M | None:
        model, sql, names, converted = self._compiled
        row = next(iter(model._default_manager.raw(sql, [parameters[name] for name in names])), None)
        if row is not None:
            connection = connections[DEFAULT_DB_ALIAS]
            for name, functions, expression in converted:
                value = getattr(row, name)
                for function in functions:
                    value = function(value, expression, connection)
                setattr(row, name, value)
        return row
