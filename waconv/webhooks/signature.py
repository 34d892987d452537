"""``X-Hub-Signature-256``: HMAC-SHA256 of the raw request bytes with the app secret.

Meta signs the bytes it sends (non-ASCII escaped as ``\\u00e9``); re-serialising parsed JSON
changes them, so only the raw body is ever hashed.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def sign(app_secret: str, raw_body: bytes) -> str:
    """The header value Meta would send for this body (used by tests, docs and the bench)."""
    return PREFIX + hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()


def is_valid(app_secret: str, raw_body: bytes, header: str) -> bool:
    if not app_secret:
        # An empty key would let anyone who knows it is empty forge deliveries.
        raise ValueError("refusing to verify a webhook without an app secret")
    if not header.startswith(PREFIX):
        return False
    given = header[len(PREFIX) :].strip().lower()
    if not given.isascii():
        # compare_digest raises TypeError on non-ASCII str; a forged header is a 403, not a 500.
        return False
    expected = hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)
