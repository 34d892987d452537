"""``/connectors/*``: conversions that close outside the chat (a shop, a CRM).

Each view checks the signature over the raw bytes first (nothing is parsed or stored before),
then parses, then runs one transaction (a Shopify order that arrives while its process applies
another is stored for the background processor instead: see waconv.connectors.backlog).
Errors leave in the admin API's shape. A connector whose secret is not set answers 503 and
takes nothing: unsigned data is never accepted.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime

from flask import Blueprint, Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from waconv import schema
from waconv.admin import service as admin
from waconv.admin.views import parse_json
from waconv.clock import utcnow
from waconv.connectors import backlog, service
from waconv.connectors.shopify import parse_time
from waconv.connectors.signatures import (
    BadSignature,
    standard_webhooks_key,
    verify_shopify,
    verify_standard,
)
from waconv.errors import APIError
from waconv.outage import database_errors, unavailable
from waconv.services import current_services
from waconv.webhooks import processor

log = logging.getLogger(__name__)

bp = Blueprint("connectors", __name__, url_prefix="/connectors")
admin_bp = Blueprint("connectors_admin", __name__, url_prefix="/admin/connectors")


# Shopify retries a webhook answered 503 for hours; a database that is down or not migrated
# yet is worth that wait, and the sender is told why.
RETRY_AFTER_SECONDS = 5


@bp.errorhandler(SQLAlchemyError)
@admin_bp.errorhandler(SQLAlchemyError)
def _database_error(exc: SQLAlchemyError) -> tuple[Response, int, dict[str, str]]:
    # Never the exception's text: it carries the statement's parameters.
    log.warning("connector.database_error error=%s", type(exc).__name__)
    try:
        with current_services().db.engine.connect() as conn:
            reason = schema.behind(conn) or "the database refused the request; try again"
    except SQLAlchemyError:
        reason = "the database cannot be reached; try again"
    err = APIError(503, "unavailable", reason)
    return jsonify(err.to_dict()), 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}


def _not_configured(variable: str) -> APIError:
    return APIError(
        503,
        "connector_not_configured",
        f"this connector is off: set {variable} to accept signed deliveries",
    )


def _refused(exc: BadSignature, header: str) -> APIError:
    return APIError(401, f"{exc.reason}_signature", exc.message, field=header)


@bp.post("/shopify")
def shopify() -> tuple[Response, int]:
    services = current_services()
    settings = services.settings
    if not settings.shopify_secret:
        raise _not_configured("WACONV_SHOPIFY_SECRET")
    raw = request.get_data(cache=False)
    try:
        verify_shopify(settings.shopify_secret, raw, request.headers.get("X-Shopify-Hmac-Sha256"))
    except BadSignature as exc:
        raise _refused(exc, "X-Shopify-Hmac-Sha256") from None
    order = parse_json(raw)
    if not isinstance(order, dict):
        raise APIError(400, "invalid_body", "the body must be a JSON object", field="body")
    # Shopify sends each webhook under one id, retries included; without one, the body's hash
    # stands in (the same bytes again are the same delivery).
    webhook_id = request.headers.get("X-Shopify-Webhook-Id", "").strip()
    if not webhook_id or len(webhook_id) > service.MAX_WEBHOOK_ID:
        webhook_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    delivery = service.ShopifyDelivery(
        webhook_id=admin.clean_text("X-Shopify-Webhook-Id", webhook_id),
        topic=request.headers.get("X-Shopify-Topic", "").strip(),
        order=order,
        triggered_at=_triggered_at(request.headers.get("X-Shopify-Triggered-At")),
    )
    with backlog.turn(settings) as inline:
        if inline:
            with services.db.transaction() as session:
                receipt = service.receive_shopify(session, delivery, settings.default_phone_region)
        else:
            try:
                receipt = backlog.store(services, raw, delivery)
            except database_errors(services.db) as exc:  # the driver's own, not SQLAlchemy's
                raise unavailable(services.db, exc) from None
            processor.wake(services)
    return jsonify(receipt.to_dict()), 200


def _triggered_at(header: str | None) -> datetime | None:
    return parse_time(header) if header else None


@bp.post("/events")
def events() -> tuple[Response, int]:
    services = current_services()
    settings = services.settings
    if not settings.connector_secret:
        raise _not_configured("WACONV_CONNECTOR_SECRET")
    raw = request.get_data(cache=False)
    try:
        verify_standard(
            standard_webhooks_key(settings.connector_secret), request.headers.get, raw, utcnow()
        )
    except BadSignature as exc:
        raise _refused(exc, "webhook-signature") from None
    body = parse_json(raw)
    with services.db.transaction() as session:
        marked = service.receive_event(session, body, settings.default_phone_region)
        answer = admin.conversion_to_dict(marked.conversion, settings)
    return jsonify(answer), 202 if marked.created else 200


@admin_bp.get("/unmatched")
def unmatched() -> Response:
    unknown = sorted(set(request.args) - {"limit", "cursor"})
    if unknown:
        raise APIError(
            400,
            "unknown_parameter",
            f"unknown query parameter {unknown[0]!r}; accepted: limit, cursor",
            field=unknown[0],
        )
    limit = admin.ListQuery.from_args({"limit": request.args.get("limit")}).limit
    cursor = request.args.get("cursor")
    after_id = admin.decode_cursor(cursor) if cursor is not None else None
    with current_services().db.transaction() as session:
        page = service.list_unmatched(session, limit, after_id)
        items = [service.receipt_to_dict(r) for r in page.items]
    return jsonify({"items": items, "next_cursor": page.next_cursor, "total": page.total})
