"""The OpenAPI 3.0 document of the admin API, served at ``GET /admin/openapi.json``.

Written by hand next to the views it describes; ``tests/admin/test_schemathesis.py`` sends
generated requests built from it and checks every answer against it, so the two cannot drift
apart silently.
"""

from __future__ import annotations

import copy
from typing import Any

from waconv.admin.service import DEFAULT_LIMIT, MAX_ID, MAX_LIMIT, MAX_ORDER_ID, SOURCES
from waconv.conversations.store import AD_FIELDS
from waconv.conversions.events import EVENT_NAMES
from waconv.models import Conversion, DispatchRequest

_EXAMPLE_WA_ID = "16505551234"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


_STRING = {"type": "string"}
_TIME = {"type": "string", "format": "date-time", "example": "2025-06-18T19:46:32Z"}
_EVENT_NAME = {"type": "string", "enum": sorted(EVENT_NAMES), "example": "Purchase"}
_STATUS = {"type": "string", "enum": list(Conversion.STATUSES)}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "stable, machine-readable"},
                "message": {"type": "string", "description": "one sentence for a person"},
                "field": {"type": "string", "description": "the request field at fault (400)"},
            },
        }
    },
    "example": {
        "error": {
            "code": "invalid_custom_data",
            "message": "a Purchase needs custom_data.currency (a 3-letter code); Meta refuses it",
            "field": "custom_data.currency",
        }
    },
}

_CONVERSION = {
    "type": "object",
    "required": [
        "id",
        "event_id",
        "event_name",
        "status",
        "attempts",
        "last_error",
        "last_error_code",
        "last_error_subcode",
        "event_time",
        "created_at",
        "sent_at",
        "next_attempt_at",
        "waba_id",
        "dataset_id",
        "conversation_id",
        "ctwa_clid",
        "source",
        "rule_name",
        "order_id",
        "custom_data",
        "destinations",
    ],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "event_id": {"type": "string", "description": "what Meta receives as event_id"},
        "event_name": _EVENT_NAME,
        "status": {
            **_STATUS,
            "description": "pending: waiting to be sent (also while its request is in "
            "flight); sent; failed: Meta refused it (see last_error), retry with POST "
            ".../retry; expired: past Meta's 7-day limit, never sent; canceled: by an "
            "operator (POST .../cancel), never sent",
        },
        "attempts": {"type": "integer", "minimum": 0},
        "last_error": _nullable({**_STRING, "description": "why the last attempt failed"}),
        "last_error_code": _nullable({"type": "integer", "description": "Meta's error.code"}),
        "last_error_subcode": _nullable({"type": "integer"}),
        "event_time": _TIME,
        "created_at": _TIME,
        "sent_at": _nullable(_TIME),
        "next_attempt_at": _TIME,
        "waba_id": _STRING,
        "dataset_id": _nullable(_STRING),
        "conversation_id": _nullable({"type": "integer"}),
        "ctwa_clid": _STRING,
        "source": {"type": "string", "enum": sorted(SOURCES)},
        "rule_name": _nullable(_STRING),
        "order_id": _nullable(_STRING),
        "custom_data": _nullable({"type": "object"}),
        "destinations": {
            "type": "object",
            "description": "its state at each destination it goes to (graph, gateway): sent "
            "only when every destination has it, failed when one failed for good",
            "additionalProperties": {
                "type": "object",
                "required": ["status", "attempts", "last_error"],
                "properties": {
                    "status": _STATUS,
                    "attempts": {"type": "integer", "minimum": 0},
                    "last_error": _nullable(_STRING),
                },
            },
        },
    },
}

_REQUEST = {
    "type": "object",
    "description": "one HTTP request that carried events to a destination; null where not "
    "applicable (no answer, no error)",
    "required": [
        "id",
        "at",
        "waba_id",
        "destination",
        "events",
        "bytes",
        "http_status",
        "duration_ms",
        "events_received",
        "fbtrace_id",
        "messages",
        "error_code",
        "error_subcode",
        "error_message",
    ],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "at": {**_TIME, "description": "when it was sent"},
        "waba_id": _STRING,
        "destination": {"type": "string", "enum": list(DispatchRequest.DESTINATIONS)},
        "events": {"type": "integer", "minimum": 0, "description": "events in the body"},
        "bytes": {"type": "integer", "minimum": 0, "description": "size of the body"},
        "http_status": _nullable(
            {"type": "integer", "description": "null: no answer (network failure, timeout)"}
        ),
        "duration_ms": {"type": "integer", "minimum": 0},
        "events_received": _nullable({"type": "integer", "description": "Meta's count"}),
        "fbtrace_id": _nullable(_STRING),
        "messages": _nullable({"type": "array", "description": "Meta's messages"}),
        "error_code": _nullable({"type": "integer", "description": "Meta's error.code"}),
        "error_subcode": _nullable({"type": "integer"}),
        "error_message": _nullable(_STRING),
    },
}

_CONVERSION_DETAIL = {
    "allOf": [
        {"$ref": "#/components/schemas/Conversion"},
        {
            "type": "object",
            "required": ["sent_event", "requests"],
            "properties": {
                "sent_event": _nullable(
                    {
                        "type": "object",
                        "description": "the event JSON as sent (rebuilt from the stored "
                        "conversion with the dispatcher's builder); null if never sent",
                    }
                ),
                "requests": {
                    "type": "array",
                    "description": "the requests that carried it, newest first",
                    "items": {"$ref": "#/components/schemas/Request"},
                },
            },
        },
    ]
}

_MARK_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "required": ["event_name"],
    "description": "Give wa_id, or user_id (the business-scoped user id) for users whose number "
    "is withheld: exactly one of them (400 otherwise). A null value counts as absent. The same "
    "user, event_name and order_id always name the same conversion: a repeat answers 200 "
    "with the conversion recorded first.",
    "properties": {
        "wa_id": _nullable(
            {"type": "string", "minLength": 1, "maxLength": 255, "example": _EXAMPLE_WA_ID}
        ),
        "user_id": _nullable({"type": "string", "minLength": 1, "maxLength": 255}),
        "event_name": _EVENT_NAME,
        "custom_data": _nullable(
            {
                "type": "object",
                "description": "Meta's custom_data; a Purchase needs a numeric value >= 0 and "
                "a 3-letter currency. order_id is copied into it.",
                "example": {"value": 23.97, "currency": "USD"},
            }
        ),
        "event_time": _nullable(
            {
                "type": "integer",
                "description": "unix seconds when the customer acted, at most 7 days ago and "
                "not in the future (default: now)",
            }
        ),
        "order_id": _nullable(
            {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_ORDER_ID,
                "description": "your order number; marks of different orders are different "
                "conversions (default: custom_data.order_id)",
            }
        ),
        "phone_number_id": _nullable(
            {
                "type": "string",
                "minLength": 1,
                "maxLength": 255,
                "description": "the business number, when the user talks to several",
            }
        ),
    },
    "example": {
        "wa_id": _EXAMPLE_WA_ID,
        "event_name": "Purchase",
        "custom_data": {"value": 23.97, "currency": "USD"},
        "order_id": "A-1001",
    },
}

_CONVERSATION = {
    "type": "object",
    "required": [
        "wa_id",
        "user_id",
        "waba_id",
        "phone_number_id",
        "ctwa_clid",
        "referral",
        "clicked_at",
        "first_message_at",
        "last_message_at",
        "parent_user_id",
        "previous_ids",
    ],
    "properties": {
        "wa_id": _nullable(_STRING),
        "user_id": _nullable(_STRING),
        "parent_user_id": _nullable(_STRING),
        "previous_ids": {
            "type": "array",
            "description": "every earlier wa_id and user_id of the user, oldest first",
            "items": _STRING,
        },
        "waba_id": _STRING,
        "phone_number_id": _STRING,
        "display_phone_number": _nullable(_STRING),
        "profile_name": _nullable(_STRING),
        "username": _nullable(_STRING),
        "ctwa_clid": _nullable({**_STRING, "description": "the latest click"}),
        "referral": _nullable(
            {
                "type": "object",
                "description": "the ad of the latest click",
                # What conversation_to_dict gives: every kept ad field (the list was a copy
                # that had lost four of them).
                "properties": {key: {} for key in (*AD_FIELDS, "welcome_message")},
            }
        ),
        "clicked_at": _nullable(_TIME),
        "first_message_at": _nullable(_TIME),
        "last_message_at": _nullable(_TIME),
        "clicks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "ctwa_clid": _nullable(_STRING),
                    "source_id": _nullable(_STRING),
                    "source_type": _nullable(_STRING),
                    "source_url": _nullable(_STRING),
                    "headline": _nullable(_STRING),
                    "clicked_at": _nullable(_TIME),
                    "message_id": _STRING,
                },
            },
        },
    },
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, ref: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


_ALWAYS = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "503": {"$ref": "#/components/responses/Disabled"},
}
_BAD_REQUEST = {"400": {"$ref": "#/components/responses/BadRequest"}}
_NOT_FOUND = {"404": {"$ref": "#/components/responses/NotFound"}}


def _text_query(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    }


def _date_query(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", "format": "date"},
        "example": "2025-06-18",
    }


_COUNTS = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
_AMOUNTS = {"type": "object", "additionalProperties": {"type": "number"}}
_AD_TOTALS = {
    "type": "object",
    "required": ["clicks", "conversations", "events", "revenue", "not_sent"],
    "properties": {
        "clicks": {"type": "integer", "minimum": 0},
        "conversations": {"type": "integer", "minimum": 0},
        "events": _COUNTS,
        "revenue": _AMOUNTS,
        "not_sent": {"type": "integer", "minimum": 0},
    },
}
_ADS_REPORT = {
    "type": "object",
    "required": ["items", "totals"],
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "source_id",
                    "source_type",
                    "source_url",
                    "headline",
                    "clicks",
                    "conversations",
                    "events",
                    "revenue",
                    "not_sent",
                    "first_click_at",
                    "last_click_at",
                ],
                "properties": {
                    **_AD_TOTALS["properties"],  # type: ignore[dict-item]
                    "source_id": _nullable(_STRING),
                    "source_type": _nullable(_STRING),
                    "source_url": _nullable(_STRING),
                    "headline": _nullable(_STRING),
                    "first_click_at": _nullable(_STRING),
                    "last_click_at": _nullable(_STRING),
                },
            },
        },
        "totals": _AD_TOTALS,
    },
}

_CONVERSION_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
    "example": 1,
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "waconv admin API",
        "version": "1",
        "description": "Conversations started by click-to-WhatsApp ads and the conversions "
        "reported for them to Meta's Conversions API. Every call needs "
        "`Authorization: Bearer $WACONV_ADMIN_TOKEN`; while that variable is unset every call "
        "answers 503. Times in answers are ISO 8601 UTC; event_time in requests is unix "
        'seconds. Errors are `{"error": {"code", "message"}}`, 400s also name the `field`.',
    },
    "servers": [{"url": "/"}],
    "security": [{"bearerAuth": []}],
    "paths": {
        "/admin/conversations/{user}": {
            "get": {
                "operationId": "getConversation",
                "summary": "A user's conversation and the ad click that started it",
                "parameters": [
                    {
                        "name": "user",
                        "in": "path",
                        "required": True,
                        "description": "wa_id, or the business-scoped user_id; any id the "
                        "user has had",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        "example": _EXAMPLE_WA_ID,
                    },
                    _text_query(
                        "phone_number_id",
                        "the business number, when the user talks to several (default: the "
                        "most recently active conversation)",
                    ),
                ],
                "responses": {
                    "200": _json("the conversation", "Conversation"),
                    **_BAD_REQUEST,
                    **_NOT_FOUND,
                    **_ALWAYS,
                },
            }
        },
        "/admin/conversions": {
            "post": {
                "operationId": "markConversion",
                "summary": "Report a conversion of a conversation (idempotent)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/MarkRequest"}}
                    },
                },
                "responses": {
                    "202": _json("queued for Meta; status pending", "Conversion"),
                    "200": _json(
                        "already recorded for this user, event_name and order_id: the "
                        "conversion recorded first, in its current state",
                        "Conversion",
                    ),
                    "400": _error(
                        "malformed body, unknown event name, custom_data Meta would refuse, "
                        "or event_time more than 7 days old or in the future"
                    ),
                    "404": _error("no conversation with that user"),
                    "422": _error("the conversation did not start from an ad click (no ctwa_clid)"),
                    **_ALWAYS,
                },
            },
            "get": {
                "operationId": "listConversions",
                "summary": "Conversions, newest first, a page at a time",
                "parameters": [
                    {"name": "status", "in": "query", "required": False, "schema": _STATUS},
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": f"page size; larger values are refused (400), not "
                        f"clamped. Default {DEFAULT_LIMIT}",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIMIT,
                            "default": DEFAULT_LIMIT,
                        },
                    },
                    _text_query("cursor", "next_cursor of the previous page, as given"),
                    {
                        "name": "event_name",
                        "in": "query",
                        "required": False,
                        "schema": _EVENT_NAME,
                    },
                    {
                        "name": "source",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": sorted(SOURCES)},
                    },
                    _text_query("wa_id", "only conversions of this user's conversations"),
                    _text_query("user_id", "only conversions of this user's conversations"),
                ],
                "responses": {
                    "200": _json("a page; next_cursor is null on the last page", "ConversionPage"),
                    **_BAD_REQUEST,
                    **_ALWAYS,
                },
            },
        },
        "/admin/conversions/{id}": {
            "get": {
                "operationId": "getConversion",
                "summary": "One conversion, the event it was sent as, and its requests",
                "parameters": [_CONVERSION_ID],
                "responses": {
                    "200": _json("the conversion", "ConversionDetail"),
                    **_BAD_REQUEST,
                    **_NOT_FOUND,
                    **_ALWAYS,
                },
            }
        },
        "/admin/conversions/{id}/retry": {
            "post": {
                "operationId": "retryConversion",
                "summary": "Queue a failed conversion again",
                "description": "Status becomes pending, due now; attempts and last_error are "
                "kept. Expired conversions, and failed ones whose event_time is about to pass "
                "Meta's 7-day limit, cannot be retried.",
                "parameters": [_CONVERSION_ID],
                "responses": {
                    "202": _json("queued again", "Conversion"),
                    **_BAD_REQUEST,
                    **_NOT_FOUND,
                    "409": _error(
                        "not failed (pending, sent, expired, canceled) or too old to send"
                    ),
                    **_ALWAYS,
                },
            }
        },
        "/admin/conversions/{id}/cancel": {
            "post": {
                "operationId": "cancelConversion",
                "summary": "Cancel a pending or failed conversion: it is never sent",
                "description": "Status becomes canceled, for good: no retry, dispatcher or "
                "repeated mark makes it pending again.",
                "parameters": [_CONVERSION_ID],
                "responses": {
                    "200": _json("canceled", "Conversion"),
                    **_BAD_REQUEST,
                    **_NOT_FOUND,
                    "409": _error(
                        "not pending or failed (sent, expired, canceled), or in a request to "
                        "Meta at this moment (try again in a few seconds)"
                    ),
                    **_ALWAYS,
                },
            }
        },
        "/admin/requests": {
            "get": {
                "operationId": "listRequests",
                "summary": "The requests sent to Meta (Graph or Gateway), newest first",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": f"page size; larger values are refused (400), not "
                        f"clamped. Default {DEFAULT_LIMIT}",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIMIT,
                            "default": DEFAULT_LIMIT,
                        },
                        "example": 1,
                    },
                    _text_query("cursor", "next_cursor of the previous page, as given"),
                ],
                "responses": {
                    "200": _json("a page; next_cursor is null on the last page", "RequestPage"),
                    **_BAD_REQUEST,
                    **_ALWAYS,
                },
            }
        },
        "/admin/reports/ads": {
            "get": {
                "operationId": "adsReport",
                "summary": "Per ad: clicks, conversations, conversions by name, revenue",
                "description": "Clicks whose message is dated from since to until (UTC, "
                "inclusive; default the last 30 days). events and revenue count conversions "
                "pending or sent credited to those clicks; not_sent counts failed and expired "
                "ones. format=csv answers one row per ad with a column per event name "
                "(events.Purchase) and per currency (revenue.USD).",
                "parameters": [
                    _date_query("since", "first day of the click, YYYY-MM-DD"),
                    _date_query("until", "last day of the click, YYYY-MM-DD"),
                    {
                        "name": "waba_id",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,32}$"},
                    },
                    {
                        "name": "format",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["json", "csv"], "default": "json"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "the report",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/AdsReport"}
                            },
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    **_BAD_REQUEST,
                    **_ALWAYS,
                },
            }
        },
        "/admin/openapi.json": {
            "get": {
                "operationId": "getOpenAPI",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.0 document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_ALWAYS,
                },
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "the value of WACONV_ADMIN_TOKEN",
            }
        },
        "schemas": {
            "Error": _ERROR,
            "Conversion": _CONVERSION,
            "ConversionPage": {
                "type": "object",
                "required": ["items", "next_cursor"],
                "properties": {
                    "items": {
                        "type": "array",
                        "maxItems": MAX_LIMIT,
                        "items": {"$ref": "#/components/schemas/Conversion"},
                    },
                    "next_cursor": _nullable(_STRING),
                },
            },
            "ConversionDetail": _CONVERSION_DETAIL,
            "Request": _REQUEST,
            "RequestPage": {
                "type": "object",
                "required": ["items", "next_cursor"],
                "properties": {
                    "items": {
                        "type": "array",
                        "maxItems": MAX_LIMIT,
                        "items": {"$ref": "#/components/schemas/Request"},
                    },
                    "next_cursor": _nullable(_STRING),
                },
            },
            "MarkRequest": _MARK_REQUEST,
            "AdsReport": _ADS_REPORT,
            "Conversation": _CONVERSATION,
        },
        "responses": {
            "BadRequest": _error(
                "a parameter is malformed or unknown (query parameters are checked, so a "
                "misspelt filter is refused rather than ignored); the message names it"
            ),
            "NotFound": _error("no such conversation or conversion"),
            "Unauthorized": _error("Authorization: Bearer token missing or wrong"),
            "Disabled": _error("the admin API is off: WACONV_ADMIN_TOKEN is not set"),
        },
    },
}

# Orders a connector kept without a conversion (waconv.connectors).
_DOCUMENT["paths"]["/admin/connectors/unmatched"] = {
    "get": {
        "operationId": "listUnmatchedOrders",
        "summary": "Connector orders kept without a conversion, newest first",
        "description": "Shopify orders that matched no conversation with an ad click "
        "(outcome unmatched), or whose conversion Meta would refuse (outcome refused, with "
        "the reason). Shopify got its 200 for each. No customer information is shown.",
        "parameters": [
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_LIMIT,
                    "default": DEFAULT_LIMIT,
                },
                "example": 10,
            },
            _text_query("cursor", "next_cursor of the previous page, as given"),
        ],
        "responses": {
            "200": _json("a page; total counts every kept order", "UnmatchedPage"),
            **_BAD_REQUEST,
            **_ALWAYS,
        },
    }
}
_DOCUMENT["components"]["schemas"]["UnmatchedPage"] = {
    "type": "object",
    "required": ["items", "next_cursor", "total"],
    "properties": {
        "items": {
            "type": "array",
            "maxItems": MAX_LIMIT,
            "items": {
                "type": "object",
                "required": ["id", "connector", "webhook_id", "outcome", "received_at"],
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "connector": _STRING,
                    "webhook_id": _STRING,
                    "topic": _nullable(_STRING),
                    "order_id": _nullable(_STRING),
                    "event_name": _nullable(_STRING),
                    "outcome": {"type": "string", "enum": ["unmatched", "refused"]},
                    "reason": _nullable(_STRING),
                    "received_at": _TIME,
                },
            },
        },
        "next_cursor": _nullable(_STRING),
        "total": {"type": "integer", "minimum": 0},
    },
}


def openapi_document() -> dict[str, Any]:
    """A fresh copy: callers may change it without touching the next request's answer."""
    return copy.deepcopy(_DOCUMENT)
