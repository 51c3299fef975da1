"""JSON bodies from machines and the provider, parsed or refused with a message naming why.

`json.loads` raises RecursionError (not ValueError) on a deeply nested body such as `[[[[...]]]]`
a megabyte deep, and keeps the last of two equal keys silently; both are refused here, as a
repeated QR parameter is.
"""

from __future__ import annotations

import json
from typing import Any

from payments.errors import InvalidParameter


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise InvalidParameter(f"key {key[:64]!r} is given 2 times (allowed: once)")
        data[key] = value
    return data


def json_input_parse(body: bytes, *, what: str) -> Any:
    """The parsed body, or InvalidParameter: `<what> is not JSON`, too deeply nested, a repeated key."""
    try:
        return json.loads(body, object_pairs_hook=_object_without_repeats)
    except InvalidParameter as repeated:
        raise InvalidParameter(f"{what}: {repeated.message}") from None
    except RecursionError:
        raise InvalidParameter(f"{what} is nested too deeply") from None
    except ValueError:  # UnicodeDecodeError included
        raise InvalidParameter(f"{what} is not JSON") from None
