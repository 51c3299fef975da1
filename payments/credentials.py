"""Machine API tokens: `<key id>.<secret>`, 256 random bits of secret, kept only as a SHA-256.

A fast hash is right here: the secret is random and long, so no dictionary or brute force reaches
it, and every machine request checks one (a password hasher, Django's PBKDF2 with a million
iterations, would spend a large part of a second of CPU on each). The key id finds the stored
hash by index; the hashes are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

# 8 bytes of key id (hex) and 32 bytes of secret (URL-safe base64, 43 characters).
_TOKEN = re.compile(r"([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class IssuedCredential:
    token: str  # shown once, to whoever issued it
    key_id: str
    token_sha256: str


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def credential_new() -> IssuedCredential:
    token = f"{secrets.token_hex(8)}.{secrets.token_urlsafe(32)}"
    return IssuedCredential(token=token, key_id=token.partition(".")[0], token_sha256=token_sha256(token))


def token_key_id(token: str) -> str | None:
    """The key id of a well-formed token, else None."""
    match = _TOKEN.fullmatch(token)
    return match.group(1) if match else None


def token_matches(token: str, stored_sha256: str) -> bool:
    return hmac.compare_digest(token_sha256(token), stored_sha256)
