"""System checks for the lean path (coffee_payment/asgi_handler.py), run by `manage.py check` and the tests.

- E001: LEAN_MIDDLEWARE is MIDDLEWARE with entries left out, in the same order, so a lean path
  never runs middleware the full chain does not, nor in another order.
- E002: every view a lean path can reach is `async def`; a sync one would hold the request's
  thread for the whole request, where an async view holds it only for its sync calls.
- E003: CsrfViewMiddleware on the lean path runs on the event loop; with CSRF_USE_SESSIONS it would
  read the session there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RegexPattern

CSRF_MIDDLEWARE = "django.middleware.csrf.CsrfViewMiddleware"
# Where the literal part of a regex route ends.
_REGEX_SYNTAX = re.compile(r"[\\.^$*+?{}\[\]|()]")


def _is_subsequence(part: list[str], whole: list[str]) -> bool:
    remaining = iter(whole)
    return all(entry in remaining for entry in part)


def _literal_prefix(pattern: Any) -> str:
    """The fixed start of a route: up to its first converter or regex syntax."""
    if isinstance(pattern, RegexPattern):
        text = str(pattern).removeprefix("^")
        return text[: match.start()] if (match := _REGEX_SYNTAX.search(text)) else text
    return str(pattern).split("<", 1)[0]


def _routes(resolver: URLResolver, prefix: str = "/") -> Iterator[tuple[str, bool, URLPattern]]:
    """(literal start of the path, whether the whole route is literal, pattern) for every view."""
    for entry in resolver.url_patterns:
        literal = _literal_prefix(entry.pattern)
        whole = literal == str(entry.pattern).removeprefix("^").removesuffix("$")
        if isinstance(entry, URLResolver):
            if whole:
                yield from _routes(entry, prefix + literal)
            else:
                yield from ((prefix + literal, False, p) for _, _, p in _routes(entry, "/"))
        else:
            yield prefix + literal, whole, entry


def _reaches_lean_path(start: str, *, whole: bool) -> bool:
    from coffee_payment.asgi_handler import LeanPaths

    lean = LeanPaths(settings.LEAN_PATHS)
    if whole:
        return start in lean
    # The variable part may spell out any lean path that begins with the literal start.
    return any(entry.startswith(start) or start.startswith(entry) for entry in lean.prefixes) or any(
        path.startswith(start) for path in lean.exact
    )


@register()
def check_lean_middleware(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors = []
    if not _is_subsequence(list(settings.LEAN_MIDDLEWARE), list(settings.MIDDLEWARE)):
        errors.append(Error(
            "LEAN_MIDDLEWARE is not MIDDLEWARE with entries left out, in the same order",
            hint=f"LEAN_MIDDLEWARE={list(settings.LEAN_MIDDLEWARE)!r}",
            id="coffee_payment.E001",
        ))
    if CSRF_MIDDLEWARE in settings.LEAN_MIDDLEWARE and settings.CSRF_USE_SESSIONS:
        errors.append(Error(
            "CsrfViewMiddleware runs on the event loop on the lean path; CSRF_USE_SESSIONS would make it "
            "read the session there",
            hint="Leave CSRF_USE_SESSIONS off, or take CsrfViewMiddleware out of LEAN_MIDDLEWARE.",
            id="coffee_payment.E003",
        ))
    return errors


@register()
def check_lean_views_are_async(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    return [
        Error(
            f"view {pattern.lookup_str} for '{start}...' is sync and can be reached on the lean path",
            hint="Views under LEAN_PATHS must be `async def` and use the async ORM API.",
            id="coffee_payment.E002",
        )
        for start, whole, pattern in _routes(get_resolver())
        if _reaches_lean_path(start, whole=whole) and not iscoroutinefunction(pattern.callback)
    ]
