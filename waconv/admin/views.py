"""The admin JSON API: thin views over the same services the CLI uses.

Each view parses its input, calls :mod:`waconv.admin.service` inside the one transaction it
owns, and shapes the answer. Refusals are ``APIError``s rendered by the app's error handler.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, jsonify, request

from waconv import reports
from waconv.admin import service
from waconv.admin.auth import require_admin
from waconv.admin.openapi import openapi_document
from waconv.conversations import store
from waconv.errors import APIError
from waconv.services import current_services

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_app_request
def _guard() -> None:
    """Every /admin path, before routing has its say: a blueprint's own hook runs only once
    one of its routes matched, so an unknown path or a wrong method answered 404 or 405
    without a token, and not 503 while the API is off."""
    if request.path == bp.url_prefix or request.path.startswith(f"{bp.url_prefix}/"):
        require_admin()


def _refuse_constant(name: str) -> None:
    # NaN and Infinity are not JSON (RFC 8259); Python's parser accepts them, databases do not.
    raise ValueError(f"{name} is not JSON")


def _json_body() -> Any:
    return parse_json(request.get_data(cache=False))


def parse_json(raw: bytes) -> Any:
    """A request body as JSON (RFC 8259: no NaN or Infinity), or a 400 naming the body."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise APIError(400, "invalid_json", "the body is not JSON", field="body") from None


def _only_query(*accepted: str) -> None:
    # A misspelt filter (?stauts=failed) would otherwise silently list everything.
    unknown = sorted(set(request.args) - set(accepted))
    if unknown:
        allowed = f"; accepted: {', '.join(accepted)}" if accepted else ""
        raise APIError(
            400,
            "unknown_parameter",
            f"unknown query parameter {unknown[0]!r}{allowed}",
            field=unknown[0],
        )


def _query_text(name: str) -> str | None:
    value = request.args.get(name)
    return service.clean_text(name, value) if value is not None else None


@bp.get("/conversations/<path:user>")
def get_conversation(user: str) -> Response:
    _only_query("phone_number_id")
    service.clean_text("user", user)
    phone_number_id = _query_text("phone_number_id")
    with current_services().db.transaction() as session:
        conversation = store.find_conversation(session, user, phone_number_id)
        if conversation is None:
            raise APIError(404, "conversation_not_found", f"no conversation with user {user!r}")
        body = store.conversation_to_dict(session, conversation)
        body["clicks"] = store.clicks_of(session, conversation)
    return jsonify(body)


@bp.post("/conversions")
def mark_conversion() -> tuple[Response, int]:
    _only_query()
    mark = service.MarkRequest.from_json(_json_body())
    services = current_services()
    with services.db.transaction() as session:
        marked = service.mark_conversion(session, mark)
        body = service.conversion_to_dict(marked.conversion, services.settings)
    return jsonify(body), 202 if marked.created else 200


@bp.get("/conversions")
def list_conversions() -> Response:
    _only_query(*service.LIST_PARAMETERS)
    query = service.ListQuery.from_args(request.args)
    services = current_services()
    with services.db.transaction() as session:
        page = service.list_conversions(session, query)
        items = [service.conversion_to_dict(c, services.settings) for c in page.items]
    return jsonify({"items": items, "next_cursor": page.next_cursor})


@bp.get("/conversions/<int:conversion_id>")
def get_conversion(conversion_id: int) -> Response:
    _only_query()
    services = current_services()
    with services.db.transaction() as session:
        body = service.conversion_detail(session, conversion_id, services.settings)
    return jsonify(body)


@bp.post("/conversions/<int:conversion_id>/cancel")
def cancel_conversion(conversion_id: int) -> Response:
    _only_query()
    services = current_services()
    with services.db.transaction() as session:
        canceled = service.cancel_conversion(session, conversion_id)
        body = service.conversion_to_dict(canceled, services.settings)
    return jsonify(body)


@bp.get("/requests")
def list_requests() -> Response:
    _only_query("limit", "cursor")
    query = service.RequestsQuery.from_args(request.args)
    with current_services().db.transaction() as session:
        items, next_cursor = service.list_requests(session, query)
    return jsonify({"items": items, "next_cursor": next_cursor})


@bp.post("/conversions/<int:conversion_id>/retry")
def retry_conversion(conversion_id: int) -> tuple[Response, int]:
    _only_query()
    services = current_services()
    with services.db.transaction() as session:
        retried = service.retry_conversion(session, conversion_id)
        body = service.conversion_to_dict(retried, services.settings)
    return jsonify(body), 202


@bp.get("/reports/ads")
def ads_report() -> Response:
    _only_query("since", "until", "waba_id", "format")
    output = request.args.get("format", "json")
    if output not in ("json", "csv"):
        raise APIError(400, "invalid_parameter", "format is json or csv", field="format")
    query = reports.ReportQuery.from_args(request.args)
    with current_services().db.transaction() as session:
        report = reports.ads_report(session, query)
    if output == "csv":
        name = f"ads-{query.since.isoformat()}-{query.until.isoformat()}.csv"
        return Response(
            report.to_csv(),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return jsonify(report.to_dict())


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())
