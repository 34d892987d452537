"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from waconv import schema
from waconv.metrics import render_metrics
from waconv.services import current_services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    try:
        with current_services().db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            # A database that answers but lacks this code's tables would fail every request.
            reason = schema.behind(conn)
    except Exception as exc:  # any driver error means "not ready"
        return jsonify({"status": "unavailable", "reason": type(exc).__name__}), 503
    if reason is not None:
        return jsonify({"status": "unavailable", "reason": reason}), 503
    return jsonify({"status": "ok"}), 200


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = render_metrics(current_services())
    return Response(body, content_type=content_type)
