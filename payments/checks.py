"""System check: every view of the payments app is async.

Under ASGI a sync view runs in a thread of its own while the request lasts; on the payment and
status paths that would put a blocking thread behind every customer. `manage.py check` (and the
test suite) fail with payments.E001 when a view loses its `async`.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction
from django.core.checks import CheckMessage, Error, register
from django.urls import URLPattern


def sync_views(patterns: list[Any]) -> list[URLPattern]:
    return [p for p in patterns if isinstance(p, URLPattern) and not iscoroutinefunction(p.callback)]


@register("payments")
def check_views_are_async(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from payments import urls

    return [
        Error(
            f"view {pattern.lookup_str} for '{pattern.pattern}' is sync",
            hint="Views on the I/O path must be `async def` and use the async ORM API.",
            id="payments.E001",
        )
        for pattern in sync_views(urls.urlpatterns)
    ]
