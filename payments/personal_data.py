"""The customer's contact for a receipt is personal data: shown masked, and kept out of log lines.

Where it may appear and how long it is kept: docs/payments.md, "Receipts".
"""

from __future__ import annotations

import re

# What could be someone's e-mail address or phone number in a text from outside (a provider's
# error description): masked before it reaches a log.
_EMAIL = re.compile(r"[^\s@\"'<>(),;:]+@[^\s@\"'<>(),;:]+")
# 10-15 digits, maybe spaced; not a run inside an id (UUIDs are hex words joined by "-").
_PHONE = re.compile(r"(?<![\w-])\+?\d(?:[ ()-]{0,2}\d){9,14}(?![\w-])")


def contact_mask(contact: str) -> str:
    """Enough for staff to tell contacts apart: "i***@e***.ru", "+7******67"; empty stays empty."""
    if not contact:
        return ""
    if "@" in contact:
        local, _, domain = contact.rpartition("@")
        host, dot, zone = domain.rpartition(".")
        masked_domain = f"{host[:1]}***{dot}{zone}" if host else f"{zone[:1]}***"
        return f"{local[:1]}***@{masked_domain}"
    return f"+{contact[:1]}{'*' * max(len(contact) - 3, 1)}{contact[-2:]}"


def personal_data_scrub(text: str) -> str:
    """`text` with anything that looks like an e-mail address or a phone number masked."""
    return _PHONE.sub("<phone>", _EMAIL.sub("<email>", text))
