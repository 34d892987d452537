"""The signatures of connector deliveries, checked over the raw bytes before anything is parsed.

Shopify: ``X-Shopify-Hmac-Sha256`` is the base64 HMAC-SHA256 of the body, keyed with the app's
secret. Standard Webhooks (``/connectors/events``): ``webhook-signature`` holds one or more
``v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">``, keyed with the
base64-decoded part of a ``whsec_...`` secret, and the timestamp must be within 5 minutes of
now (so a captured request cannot be replayed later). The algorithm is the one of the
``standardwebhooks`` package, in a dozen lines instead of a dependency.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from datetime import datetime, timedelta

from waconv.clock import from_unix

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
TIMESTAMP_TOLERANCE = timedelta(minutes=5)  # the Standard Webhooks specification's window
MAX_SIGNATURES = 16  # a header listing more is not a key rotation but a guessing attempt


class InvalidSecret(ValueError):
    """The configured secret is malformed; the message never quotes it."""


class BadSignature(Exception):
    """Why a delivery is refused (``missing`` or ``wrong``), in a sentence for the sender."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _hmac_base64(key: bytes, content: bytes) -> bytes:
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())


def verify_shopify(secret: str, body: bytes, header: str | None) -> None:
    if not header:
        raise BadSignature("missing", "X-Shopify-Hmac-Sha256 is missing")
    expected = _hmac_base64(secret.encode("utf-8"), body)
    if not hmac.compare_digest(expected, header.strip().encode("ascii", "replace")):
        raise BadSignature("wrong", "X-Shopify-Hmac-Sha256 does not match the body")


def standard_webhooks_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix may be left out)."""
    encoded = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret(
            'must be whsec_ followed by base64 (e.g. from: python3 -c "import base64, os; '
            "print('whsec_' + base64.b64encode(os.urandom(32)).decode())\")"
        ) from None
    if len(key) < 16:
        raise InvalidSecret("is too short: use at least 16 random bytes (24 with whsec_ base64)")
    return key


def sign_standard(key: bytes, webhook_id: str, timestamp: int | str, body: bytes) -> str:
    """The ``webhook-signature`` a sender puts on a delivery (used by tests and the bench)."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + _hmac_base64(key, content).decode("ascii")


def verify_standard(
    key: bytes,
    headers: Callable[[str], str | None],
    body: bytes,
    now: datetime,
) -> str:
    """Check a Standard Webhooks delivery (``headers``: a case-insensitive lookup); return its
    ``webhook-id``."""
    webhook_id = headers("webhook-id") or ""
    timestamp = headers("webhook-timestamp") or ""
    signatures = headers("webhook-signature") or ""
    if not (webhook_id and timestamp and signatures):
        raise BadSignature(
            "missing", "webhook-id, webhook-timestamp and webhook-signature are all required"
        )
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise BadSignature("wrong", "webhook-timestamp must be unix seconds")
    sent_at = from_unix(int(timestamp))
    if abs(now - sent_at) > TIMESTAMP_TOLERANCE:
        raise BadSignature(
            "stale",
            "webhook-timestamp is more than 5 minutes from now: sign each delivery when it "
            "is sent (and check the sender's clock)",
        )
    expected = sign_standard(key, webhook_id, timestamp, body).encode("ascii")
    for given in signatures.split()[:MAX_SIGNATURES]:
        if hmac.compare_digest(expected, given.encode("ascii", "replace")):
            return webhook_id
    raise BadSignature("wrong", "webhook-signature does not match the delivery")
