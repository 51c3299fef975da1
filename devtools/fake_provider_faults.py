"""The fake provider's faults, switched while it runs: `POST /control` on its own port.

    curl -d '{"fail": "429", "latency": 0.5, "notifications": {"lose": 0.5, "reorder": true}}' 127.0.0.1:8001/control
    curl 127.0.0.1:8001/control        # the faults now, and what the notifications met

The chaos run (devtools/chaos.py) flips them on its seeded schedule. A body names only what it
changes; a bad one is a 400 naming the key.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, fields
from typing import Any

# Bounds of the values a control may set, in seconds.
LATENCY_MAX, HANG_MAX, DELAY_MAX = 60.0, 3600.0, 60.0
# A repeated notification goes out again this long after its first copy (seconds, uniform).
REPEAT_AFTER = (0.1, 1.0)


@dataclass
class NotificationFaults:
    """What becomes of each notification while they are on (chances drawn per notification)."""

    lose: float = 0.0  # share never sent
    repeat: float = 0.0  # share sent a second time, REPEAT_AFTER later (after newer ones, often)
    delay: float = 0.0  # each sent up to this many seconds late
    reorder: bool = False  # held back, then sent newest first once reorder is switched off

    def as_json(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


class ControlError(ValueError):
    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


def _number(data: dict[str, Any], key: str, high: float, where: str = "") -> float | None:
    if key not in data:
        return None
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
        raise ControlError(f"{where}{key}={value!r} is not a number in 0..{high:g}", f"{where}{key}")
    return float(value)


def _notification_faults(data: Any) -> NotificationFaults:
    if not isinstance(data, dict):
        raise ControlError("notifications must be an object", "notifications")
    known = {field.name for field in fields(NotificationFaults)}
    if unknown := sorted(set(data) - known):
        raise ControlError(f"notifications.{unknown[0]} is not one of {', '.join(sorted(known))}",
                           f"notifications.{unknown[0]}")
    if "reorder" in data and not isinstance(data["reorder"], bool):
        raise ControlError("notifications.reorder must be true or false", "notifications.reorder")
    chances = {key: _number(data, key, 1.0, "notifications.") for key in ("lose", "repeat")}
    return NotificationFaults(lose=chances["lose"] or 0.0, repeat=chances["repeat"] or 0.0,
                              delay=_number(data, "delay", DELAY_MAX, "notifications.") or 0.0,
                              reorder=bool(data.get("reorder", False)))


def control_parse(body: bytes, *, fail_modes: Collection[str]) -> dict[str, Any]:
    """The changes a POST /control body asks for: fail, latency, hang_seconds, notifications
    (a NotificationFaults replacing the current one whole), seed (of the notification faults' draws)."""
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise ControlError("the body is not JSON", "body") from None
    if not isinstance(data, dict):
        raise ControlError("the body is not a JSON object", "body")
    allowed = ("fail", "latency", "hang_seconds", "notifications", "seed")
    if unknown := sorted(set(data) - set(allowed)):
        raise ControlError(f"{unknown[0]} is not one of {', '.join(allowed)}", unknown[0])
    changes: dict[str, Any] = {}
    if "fail" in data:
        if data["fail"] not in fail_modes:
            raise ControlError(f"fail={data['fail']!r} is not one of {', '.join(fail_modes)}", "fail")
        changes["fail"] = data["fail"]
    for key, high in (("latency", LATENCY_MAX), ("hang_seconds", HANG_MAX)):
        if (value := _number(data, key, high)) is not None:
            changes[key] = value
    if "notifications" in data:
        changes["notifications"] = _notification_faults(data["notifications"])
    if "seed" in data:
        if isinstance(data["seed"], bool) or not isinstance(data["seed"], int):
            raise ControlError("seed must be a whole number", "seed")
        changes["seed"] = data["seed"]
    return changes
