"""What the app answers while its database cannot serve: a 503 that says why, never a 500."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from waconv import schema
from waconv.errors import APIError

if TYPE_CHECKING:
    from waconv.db import Database

log = logging.getLogger(__name__)

# Meta redelivers a webhook that got an error for up to 7 days; a database restart takes
# seconds, so a short wait is enough for the next try to find it back.
RETRY_AFTER_SECONDS = 5


def database_errors(db: Database) -> tuple[type[BaseException], ...]:
    """What a statement raises when the database fails: SQLAlchemy's errors, and the driver's
    own where a statement went to the driver directly (the webhook's insert)."""
    driver_error = getattr(db.engine.dialect.dbapi, "Error", SQLAlchemyError)
    return (SQLAlchemyError, driver_error)


def unavailable(db: Database, exc: BaseException) -> APIError:
    """The 503 for a database error: not migrated (naming the command that fixes it), or not
    reachable for now (with Retry-After)."""
    try:
        with db.engine.connect() as conn:
            reason = schema.behind(conn)
    except Exception:  # not reachable at all: the usual case of a restart
        reason = None
    if reason is not None:
        log.warning("database.not_migrated")
        return APIError(503, "not_migrated", reason)
    log.warning("database.unavailable error=%s", type(exc).__name__)
    return APIError(
        503,
        "database_unavailable",
        f"the database cannot be used right now ({type(exc).__name__}); nothing was stored, "
        "try again",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )
