"""Logging set-up: one format, and a filter that blanks any secret that slips into a record."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from waconv.config import SECRET_FIELDS, Settings

REDACTED = "[redacted]"
# Shorter values are too likely to match ordinary text to be worth blanking.
MIN_SECRET_LENGTH = 6
# Alembic 1.16+ logs a line per built-in plugin at INFO whenever it reads the migrations (the
# schema check of every command): noise before a command's one line of error.
QUIET_LOGGERS = ("alembic.runtime.plugins",)
# The one path that names a customer: /admin/conversations/<wa_id or user_id> (a phone number).
_USER_IN_PATH = re.compile(r"^(/admin/conversations/)[^/]+")


def loggable_path(path: str) -> str:
    """A request path as request logs show it: no query string (the handshake's verify token
    is there) and no user id."""
    return _USER_IN_PATH.sub(rf"\g<1>{REDACTED}", path.split("?", 1)[0])


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len)[::-1]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        cleaned = message
        for secret in self.secrets:
            cleaned = cleaned.replace(secret, REDACTED)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(settings: Settings, extra_secrets: Iterable[str] = ()) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_waconv", False) for h in root.handlers):
        handler: logging.Handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        handler._waconv = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    secrets = [getattr(settings, name) for name in SECRET_FIELDS]
    redactor = RedactSecrets([*secrets, *extra_secrets])
    for handler in root.handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactSecrets)]:
            handler.removeFilter(old)
        handler.addFilter(redactor)
