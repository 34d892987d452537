"""GET /admin/openapi.json: the document describes every /admin route, auth and errors."""

from __future__ import annotations

import re

from flask import Flask

from tests.admin.conftest import Admin
from tests.admin.test_requests import RECORD_KEYS
from waconv.conversations.store import _ad


def _shape(path: str) -> str:
    """/admin/conversions/<int:conversion_id> and /admin/conversions/{id} -> .../{}"""
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def test_document_is_served_with_the_token(admin: Admin) -> None:
    r = admin.get("/admin/openapi.json")
    assert r.status_code == 200
    assert r.mimetype == "application/json"
    doc = r.json
    assert doc["openapi"].startswith("3.0")
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "the value of WACONV_ADMIN_TOKEN",
    }
    assert doc["security"] == [{"bearerAuth": []}]
    assert doc["components"]["schemas"]["Error"]["required"] == ["error"]


def test_every_admin_route_is_documented(app: Flask, admin: Admin) -> None:
    doc = admin.get("/admin/openapi.json").json
    routes = {
        (_shape(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/admin/")
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }
    documented = {(_shape(path), method) for path, item in doc["paths"].items() for method in item}
    assert routes == documented


def test_every_operation_declares_auth_errors_and_json_answers(admin: Admin) -> None:
    doc = admin.get("/admin/openapi.json").json
    for item in doc["paths"].values():
        for operation in item.values():
            assert {"401", "503"} <= set(operation["responses"])
            for status, answer in operation["responses"].items():
                if "$ref" in answer:
                    answer = doc["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
                # The ads report also answers CSV, on request (format=csv).
                assert set(answer["content"]) - {"text/csv"} == {"application/json"}, status


def test_limits_in_the_document_are_the_ones_enforced(admin: Admin) -> None:
    doc = admin.get("/admin/openapi.json").json
    params = {p["name"]: p for p in doc["paths"]["/admin/conversions"]["get"]["parameters"]}
    assert params["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
        "default": 100,
    }
    assert admin.get("/admin/conversions", limit=1000).status_code == 200
    assert admin.get("/admin/conversions", limit=1001).status_code == 400


def test_the_documented_referral_names_every_ad_field_the_api_returns(admin: Admin) -> None:
    doc = admin.get("/admin/openapi.json").json
    referral = doc["components"]["schemas"]["Conversation"]["properties"]["referral"]
    returned = _ad({"ctwa_clid": "x", "welcome_message": {"text": "hi"}})
    assert set(referral["properties"]) == set(returned)


def test_the_request_log_is_documented_as_the_contract_shapes_it(admin: Admin) -> None:
    doc = admin.get("/admin/openapi.json").json
    schemas = doc["components"]["schemas"]
    assert set(schemas["Request"]["required"]) == RECORD_KEYS
    assert "canceled" in schemas["Conversion"]["properties"]["status"]["enum"]
    detail = doc["paths"]["/admin/conversions/{id}"]["get"]["responses"]["200"]
    assert detail["content"]["application/json"]["schema"]["$ref"].endswith("ConversionDetail")
    params = {p["name"]: p for p in doc["paths"]["/admin/requests"]["get"]["parameters"]}
    assert params["limit"]["schema"]["maximum"] == 1000
    assert admin.get("/admin/requests", limit=1000).status_code == 200
    assert admin.get("/admin/requests", limit=1001).status_code == 400
