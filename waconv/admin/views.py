"""The admin JSON API: thin views over the same services the CLI uses."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from waconv.admin.auth import require_admin
from waconv.conversations import store
from waconv.errors import APIError
from waconv.services import current_services

bp = Blueprint("admin", __name__, url_prefix="/admin")
bp.before_request(require_admin)


@bp.get("/conversations/<path:user>")
def get_conversation(user: str) -> Response:
    phone_number_id = request.args.get("phone_number_id") or None
    with current_services().db.transaction() as session:
        conversation = store.find_conversation(session, user, phone_number_id)
        if conversation is None:
            raise APIError(404, "conversation_not_found", f"no conversation with user {user!r}")
        body = store.conversation_to_dict(conversation)
        body["clicks"] = store.clicks_of(session, conversation)
    return jsonify(body)
