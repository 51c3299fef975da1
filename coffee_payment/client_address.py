"""The client's address as the ingress saw it, for the admin login throttle (django-axes)."""

from __future__ import annotations

from django.http import HttpRequest


def client_address(request: HttpRequest) -> str | None:
    """The last X-Forwarded-For entry, else the peer address.

    TLS ends at the ingress, so the peer is the ingress itself: throttling by it would lock every
    client out together. The ingress appends the address it was connected from to whatever
    X-Forwarded-For the client sent, so only the last entry is trustworthy; earlier ones are the
    client's own words.
    """
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    last = forwarded.rsplit(",", 1)[-1].strip()
    return last or request.META.get("REMOTE_ADDR")
