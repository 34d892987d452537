"""Errors that leave the app as JSON: ``{"error": {"code": "...", "message": "..."}}``."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error with an HTTP status, a stable code and a sentence for the caller."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.details)
        return {"error": body}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(err: APIError) -> Any:
        return jsonify(err.to_dict()), err.status, err.headers

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Any:
        code = (err.name or "error").lower().replace(" ", "_")
        status = err.code or 500
        response = jsonify({"error": {"code": code, "message": err.description}})
        # Keep what HTTP requires of some errors, e.g. Allow on a 405.
        for name, value in err.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, status

    @app.errorhandler(SQLAlchemyError)
    def _database_error(err: SQLAlchemyError) -> Any:
        from waconv.outage import unavailable
        from waconv.services import current_services

        return _api_error(unavailable(current_services().db, err))

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Any:
        log.exception("request.unhandled_error")
        body = {"error": {"code": "internal_error", "message": "internal error; see the logs"}}
        return jsonify(body), 500
