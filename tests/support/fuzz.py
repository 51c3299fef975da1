"""Hostile HTTP requests for the fuzz tests: every route of the URLconf, mangled every way.

A `Fuzzed` request is raw bytes on the wire (path, query string, headers, body), so the same
examples go to the ASGI application in-process and to a real Gunicorn over a socket. The routes
come from the URLconf itself: a route added later is fuzzed without anyone listing it here.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging.config
import re
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.urls import URLPattern, URLResolver, get_resolver
from hypothesis import strategies as st
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from coffee_payment.asgi_types import ASGIApp
from coffee_payment.log_config import logging_config

# Host names the testing layer allows, and what else a client may send as Host.
GOOD_HOSTS = ("localhost", "127.0.0.1", "testserver")
BAD_HOSTS = ("evil.example", "10.244.1.17", "[fd00::17]:8000", "localhost:99999", "", "a" * 300, "exa mple", "..")
# Parameter and form field names the server (and the admin) read, plus junk.
KNOWN_NAMES = (
    "deviceUuid", "orderId", "drinkNo", "drinkName", "size", "price", "q", "o", "p", "e", "all",
    "_changelist_filters", "next", "username", "password", "csrfmiddlewaretoken", "action",
    "_selected_action", "index", "select_across", "_save", "status__exact", "id__gte", "created_at__gte",
)
METHODS = ("GET", "GET", "GET", "POST", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "FOO")
CONTENT_TYPES = (
    "application/json", "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
    "multipart/form-data", "multipart/form-data; boundary=", "text/plain", "application/json; charset=latin-1",
    "application/x-www-form-urlencoded; charset=utf-16", "*/*", "garbage",
)


@dataclass(frozen=True)
class Fuzzed:
    method: str
    target: bytes  # path and query, percent-encoded as on the wire
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""

    def __repr__(self) -> str:
        # Bounded: a failing example's body may be 200 kB of brackets.
        body = self.body[:200] + (b"...(%d bytes)" % len(self.body) if len(self.body) > 200 else b"")
        return f"Fuzzed(method={self.method!r}, target={self.target[:300]!r}, headers={self.headers!r}, body={body!r})"

    @property
    def path(self) -> bytes:
        return self.target.split(b"?", 1)[0]

    @property
    def query(self) -> bytes:
        return self.target.split(b"?", 1)[1] if b"?" in self.target else b""

    def wire(self) -> bytes:
        """The request as HTTP/1.1 bytes, with Content-Length and Connection: close."""
        lines = [f"{self.method} ".encode() + self.target + b" HTTP/1.1"]
        lines += [name + b": " + value for name, value in self.headers]
        lines += [b"content-length: " + str(len(self.body)).encode(), b"connection: close"]
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


def route_regexes() -> list[str]:
    """A full-path regex for every view in the URLconf (nested includes joined)."""

    def walk(resolver: URLResolver, prefix: str) -> Iterator[str]:
        for entry in resolver.url_patterns:
            part = entry.pattern.regex.pattern.removeprefix("^")
            if isinstance(entry, URLPattern):
                yield prefix + part.removesuffix(r"\Z").removesuffix("$")
            else:
                yield from walk(entry, prefix + part)

    return sorted(set(walk(get_resolver(), "")))


def _encode(text: str) -> bytes:
    # What a client does with a path or value: UTF-8, percent-encoded (a NUL becomes %00).
    return urllib.parse.quote(text, safe="/:@!$'()*+,;=-._~").encode("ascii")


HUGE_NUMBERS = st.sampled_from(["9" * 30, "9" * 5000, "-0", "1e999", "NaN", "1" + "0" * 400, "0x1F", "１２"])
NASTY_TEXT = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{1,70}", fullmatch=True),  # id-shaped, some too long
    st.text(max_size=40),
    st.integers(-10, 10**6).map(str),
    HUGE_NUMBERS,
    st.sampled_from(["\x00", "a\x00b", "\ufffd", "' OR 1=1 --", "../../etc/passwd", "%00", "{{ 7*7 }}", "<script>"]),
)
# Raw (already encoded) bytes for a path segment or value: bad UTF-8 and broken escapes included.
RAW_PIECES = st.sampled_from([b"%ff", b"%ed%a0%80", b"%c0%80", b"%", b"%zz", b"%00", b"%2e%2e", b"%2F", b"\xff"])


def route_groups(regexes: list[str]) -> list[list[str]]:
    """The routes in three groups drawn from equally: the admin has most of the routes, and its
    changelists (where actions post ids) are a few of those."""
    admin = [regex for regex in regexes if regex.startswith("admin/")]
    changelists = [regex for regex in admin if re.fullmatch(r"admin/\w+/\w+/", regex)]
    return [group for group in ([r for r in regexes if r not in admin], admin, changelists) if group]


@st.composite
def paths(draw: st.DrawFn, regexes: list[str]) -> bytes:
    regex = draw(st.sampled_from(draw(st.sampled_from(route_groups(regexes)))))
    text = draw(st.from_regex(regex, fullmatch=True).filter(lambda t: len(t) < 300))
    path = b"/" + _encode(text)
    if draw(st.integers(0, 4)) == 0:  # mangle: a raw piece somewhere in the path
        cut = draw(st.integers(1, len(path)))
        path = path[:cut] + draw(RAW_PIECES) + path[cut:]
    return path


@st.composite
def query_strings(draw: st.DrawFn) -> bytes:
    pairs = draw(st.lists(st.tuples(st.one_of(st.sampled_from(KNOWN_NAMES), NASTY_TEXT), NASTY_TEXT), max_size=6))
    query = b"&".join(_encode(name) + b"=" + _encode(value) for name, value in pairs)
    if draw(st.booleans()):
        query += b"&" + draw(RAW_PIECES) + b"=" + draw(RAW_PIECES)
    return query


def _json_values() -> st.SearchStrategy[object]:
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(min_value=10**100, max_value=10**300),
        st.floats(allow_nan=False), st.text(max_size=20), st.sampled_from(["\x00", "\ud800", "a/../b"]),
    )
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@st.composite
def bodies(draw: st.DrawFn, *, admin_form: bool = False) -> tuple[str | None, bytes]:
    """(content type or None, body bytes); `admin_form`: a staff member posting to the admin."""
    kinds = ["form", "admin-action", "multipart"] if admin_form else [
        "none", "json", "notification", "nested", "form", "admin-action", "multipart", "binary"]
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return None, b""
    if kind == "json":
        return "application/json", json.dumps(draw(_json_values())).encode()
    if kind == "notification":
        payment = {"id": draw(st.one_of(NASTY_TEXT, _json_values())), "metadata": {"order_id": draw(NASTY_TEXT)}}
        body = {"type": "notification", "event": draw(st.sampled_from(["payment.succeeded", "x"])), "object": payment}
        return "application/json", json.dumps(body).encode()
    if kind == "nested":
        depth = draw(st.sampled_from([100, 1000, 5000, 100_000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return "application/json", (opener * depth + "1" + closer * depth).encode()
    if kind == "form":
        pairs = draw(st.lists(st.tuples(st.sampled_from(KNOWN_NAMES), NASTY_TEXT), max_size=6))
        return "application/x-www-form-urlencoded", b"&".join(_encode(k) + b"=" + _encode(v) for k, v in pairs)
    if kind == "admin-action":  # an admin changelist's action form, with ids of any shape
        # delete_selected: the one action every model has.
        action = draw(st.sampled_from(["delete_selected", "delete_selected", "mark_failed", "nope"]))
        ids = draw(st.lists(NASTY_TEXT, min_size=1, max_size=3))
        fields = [("action", action), ("index", "0"), *(("_selected_action", value) for value in ids)]
        return "application/x-www-form-urlencoded", b"&".join(_encode(k) + b"=" + _encode(v) for k, v in fields)
    if kind == "multipart":
        name, value = draw(st.sampled_from(KNOWN_NAMES)), draw(NASTY_TEXT).encode("utf-8", "surrogatepass")
        part = b'--xyz\r\ncontent-disposition: form-data; name="' + name.encode() + b'"\r\n\r\n' + value + b"\r\n"
        return "multipart/form-data; boundary=xyz", part + draw(st.sampled_from([b"--xyz--\r\n", b"", b"--xy"]))
    return draw(st.sampled_from(CONTENT_TYPES)), draw(st.binary(max_size=200))


HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


@dataclass(frozen=True)
class Staff:
    """A logged-in staff user's cookies, so the fuzz reaches the admin's views behind the login."""

    session_key: str
    csrf_token: str


@st.composite
def requests(draw: st.DrawFn, regexes: list[str], staff: Staff | None = None) -> Fuzzed:
    target = draw(paths(regexes))
    as_staff = staff is not None and draw(st.booleans())
    # Staff post forms to the admin half the time.
    method = "POST" if as_staff and draw(st.booleans()) else draw(st.sampled_from(METHODS))
    if draw(st.booleans()):
        target += b"?" + draw(query_strings())
    # Mostly a host the site answers to, so the requests get past Host validation.
    good = draw(st.integers(0, 4)) > 0
    host = draw(st.sampled_from(GOOD_HOSTS) if good else st.one_of(st.sampled_from(BAD_HOSTS), HEADER_VALUE))
    headers: list[tuple[bytes, bytes]] = [(b"host", host.encode("latin-1"))]
    # Mostly as the ingress sends it (HTTPS), so requests get past the production redirect.
    if draw(st.integers(0, 5)):
        headers.append((b"x-forwarded-proto", b"https"))
    cookies = draw(st.lists(st.tuples(st.sampled_from(["sessionid", "csrftoken", "x"]), st.one_of(
        HEADER_VALUE, st.sampled_from(['"\\000abcdefgh"', '"\\377"', "\x7f"])
    )), max_size=3))
    if as_staff:
        assert staff is not None
        cookies += [("sessionid", staff.session_key), ("csrftoken", staff.csrf_token)]
        origin = f"https://{host}".encode("latin-1")
        headers += [(b"x-csrftoken", staff.csrf_token.encode()), (b"origin", origin), (b"referer", origin + b"/admin/")]
    if cookies:
        headers.append((b"cookie", "; ".join(f"{k}={v}" for k, v in cookies).encode("latin-1")))
    content_type, body = draw(bodies(admin_form=as_staff and method == "POST" and target.startswith(b"/admin/")))
    if content_type is not None:
        headers.append((b"content-type", content_type.encode()))
    for name in draw(st.lists(st.sampled_from(["x-forwarded-for", "referer", "accept-language", "user-agent",
                                               "x-requested-with", "range", "if-modified-since", "accept-encoding"]),
                              max_size=3, unique=True)):
        headers.append((name.encode(), draw(HEADER_VALUE).encode()))
    return Fuzzed(method=method, target=target, headers=tuple(headers), body=body)


def is_json_line(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


_STATUS_LINE = re.compile(rb"^HTTP/1\.1 (\d{3}) ")


def status_of(raw_response: bytes) -> int | None:
    match = _STATUS_LINE.match(raw_response)
    return int(match.group(1)) if match else None


@contextmanager
def json_logs() -> Iterator[io.StringIO]:
    """Production's logging (JSON lines, INFO) into one buffer for stdout and stderr."""
    buffer = io.StringIO()
    with redirect_stderr(buffer), redirect_stdout(buffer):
        logging.config.dictConfig(logging_config(log_format="json", level="INFO"))
    try:
        yield buffer
    finally:
        logging.config.dictConfig(settings.LOGGING)


# The peer of every in-process request: the ingress, trusted as a worker behind it trusts it
# (GUNICORN_FORWARDED_ALLOW_IPS), so its X-Forwarded-Proto and X-Forwarded-For count.
INGRESS = "10.244.0.9"


async def call(application: ASGIApp, request: Fuzzed) -> tuple[int, dict[str, str], bytes]:
    """One request as uvicorn hands it over from a trusted ingress (the path percent-decoded, the
    rest raw; uvicorn's proxy headers handling applied): the status, headers and body of the answer."""
    done = asyncio.Event()
    sent: list[dict[str, Any]] = []
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    headers = [*request.headers, (b"content-length", str(len(request.body)).encode())]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
        "scheme": "http", "path": urllib.parse.unquote(request.path.decode("latin-1")), "raw_path": request.path,
        "query_string": request.query, "root_path": "", "headers": headers,
        "client": (INGRESS, 40000), "server": ("127.0.0.1", 8000),
    }
    trusting = ProxyHeadersMiddleware(application, trusted_hosts=[INGRESS])  # type: ignore[arg-type]
    await asyncio.wait_for(trusting(scope, receive, send), timeout=20)
    start = next(message for message in sent if message["type"] == "http.response.start")
    answer_headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in start["headers"]}
    return start["status"], answer_headers, b"".join(message.get("body", b"") for message in sent[1:])


def fuzzed(method: str, target: str, *, host: str = "localhost", body: bytes = b"", content_type: str = "",
           https: bool = True) -> Fuzzed:
    """A request spelled out by hand; `https`: as the ingress forwards it (X-Forwarded-Proto)."""
    headers = [(b"host", host.encode())] + ([(b"x-forwarded-proto", b"https")] if https else [])
    if content_type:
        headers.append((b"content-type", content_type.encode()))
    return Fuzzed(method=method, target=target.encode(), headers=tuple(headers), body=body)
