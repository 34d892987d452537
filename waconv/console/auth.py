"""The console's session: a signed cookie that says "logged in" and holds a CSRF token.

The cookie never holds the admin token, nor anything derived from it: it is signed with a key
derived from the admin token and WACONV_SECRET_KEY, so changing either one logs everybody out.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from waconv.clock import utcnow
from waconv.models import ConsoleLoginFailure
from waconv.services import current_services

COOKIE = "waconv_console"
COOKIE_PATH = "/console"
# An operator's working day; after it, log in again.
SESSION_SECONDS = 12 * 3600
CSRF_FIELD = "csrf_token"
# Wrong tokens a client may try per window before the login answers 429: enough for typos,
# far too few to guess a token. Kept in the database, so every worker process counts them.
LOGIN_FAILURES = 5
LOGIN_WINDOW = timedelta(minutes=1)
# Browsers treat these as secure contexts without TLS; everywhere else the cookie needs TLS.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


@dataclass(frozen=True)
class ConsoleSession:
    csrf_token: str


def _serializer() -> URLSafeTimedSerializer | None:
    settings = current_services().settings
    if not settings.admin_token:
        return None
    key = hmac.new(
        f"waconv console {settings.secret_key}".encode(),
        settings.admin_token.encode(),
        hashlib.sha256,
    ).digest()
    return URLSafeTimedSerializer(key, salt="waconv.console.session")


def token_matches(candidate: str) -> bool:
    expected = current_services().settings.admin_token
    return bool(expected) and hmac.compare_digest(candidate.encode(), expected.encode())


def _client() -> str:
    """The client's address, keyed with the secret key: rows that count failures without
    keeping an address. Behind a proxy every client is the proxy (one shared limit)."""
    secret = current_services().settings.secret_key or ""
    address = request.remote_addr or ""
    return hmac.new(secret.encode(), address.encode(), hashlib.sha256).hexdigest()


def login_retry_after(session: Session) -> int | None:
    """Seconds until this client may try a token again, or None when it may now."""
    since = utcnow() - LOGIN_WINDOW
    failures = select(ConsoleLoginFailure.failed_at).where(
        ConsoleLoginFailure.client == _client(), ConsoleLoginFailure.failed_at > since
    )
    count, oldest = session.execute(
        select(func.count(), func.min(failures.subquery().c.failed_at))
    ).one()
    if count < LOGIN_FAILURES or oldest is None:
        return None
    return max(1, math.ceil((oldest - since).total_seconds()))


def login_failed(session: Session) -> None:
    now = utcnow()
    # Older failures count no more: forget them (every client's) as new ones come.
    session.execute(
        delete(ConsoleLoginFailure).where(ConsoleLoginFailure.failed_at <= now - LOGIN_WINDOW)
    )
    session.add(ConsoleLoginFailure(client=_client(), failed_at=now))


def login_succeeded(session: Session) -> None:
    session.execute(delete(ConsoleLoginFailure).where(ConsoleLoginFailure.client == _client()))


def current_session() -> ConsoleSession | None:
    serializer = _serializer()
    raw = request.cookies.get(COOKIE)
    if serializer is None or not raw:
        return None
    try:
        data: Any = serializer.loads(raw, max_age=SESSION_SECONDS)
    except BadSignature:  # also SignatureExpired
        return None
    csrf = data.get("csrf") if isinstance(data, dict) else None
    return ConsoleSession(csrf) if isinstance(csrf, str) and csrf else None


def start_session(response: Response) -> None:
    serializer = _serializer()
    assert serializer is not None  # only called after token_matches
    value = serializer.dumps({"csrf": secrets.token_urlsafe(32)})
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        secure=_secure(),
        httponly=True,
        samesite="Strict",
    )


def end_session(response: Response) -> None:
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, secure=_secure(), httponly=True, samesite="Strict"
    )


def csrf_ok(session: ConsoleSession) -> bool:
    sent = request.form.get(CSRF_FIELD, "")
    return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf_token.encode())


def _secure() -> bool:
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    return request.is_secure or host not in LOCAL_HOSTS


# A notice for the page after a redirect ("Conversion 7 is queued again."), in a cookie of its
# own: Flask's flash() would need an app-wide secret key and session.
FLASH_COOKIE = "waconv_console_notice"
FLASH_SECONDS = 60


def set_notice(response: Response, level: str, message: str) -> None:
    serializer = _serializer()
    if serializer is None:
        return
    response.set_cookie(
        FLASH_COOKIE,
        serializer.dumps({"level": level, "message": message[:500]}, salt="notice"),
        max_age=FLASH_SECONDS,
        path=COOKIE_PATH,
        secure=_secure(),
        httponly=True,
        samesite="Strict",
    )


def read_notice() -> dict[str, str] | None:
    serializer = _serializer()
    raw = request.cookies.get(FLASH_COOKIE)
    if serializer is None or not raw:
        return None
    try:
        data: Any = serializer.loads(raw, max_age=FLASH_SECONDS, salt="notice")
    except BadSignature:
        return None
    return data if isinstance(data, dict) else None


def clear_notice(response: Response) -> None:
    response.delete_cookie(
        FLASH_COOKIE, path=COOKIE_PATH, secure=_secure(), httponly=True, samesite="Strict"
    )
