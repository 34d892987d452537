"""Every /admin endpoint: 401 without the right bearer token, 503 while the API is off."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from tests.admin.conftest import Admin
from tests.conftest import ADMIN_TOKEN
from tests.webhooks.helpers import count
from waconv.models import Conversion
from waconv.services import Services

ENDPOINTS = [
    ("GET", "/admin/conversations/16505551234"),
    ("GET", "/admin/conversions"),
    ("POST", "/admin/conversions"),
    ("GET", "/admin/conversions/1"),
    ("POST", "/admin/conversions/1/retry"),
    ("GET", "/admin/openapi.json"),
    # Paths and methods no route takes are guarded too: probing needs the token.
    ("GET", "/admin/nothing"),
    ("GET", "/admin"),
    ("DELETE", "/admin/conversions"),
    ("GET", "/admin/conversions/1/retry"),
]
MARK = {"wa_id": "16505551234", "event_name": "LeadSubmitted"}


def _call(app: Flask, method: str, path: str, headers: dict[str, str]) -> Any:
    client = app.test_client()
    if method == "POST":
        return client.post(path, json=MARK, headers=headers)
    return client.open(path, method=method, headers=headers)


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": ADMIN_TOKEN},
        {"Authorization": "Bearer "},
    ],
    ids=["missing", "wrong", "longer", "basic", "no-scheme", "empty"],
)
def test_wrong_or_missing_token_is_401(
    app: Flask, services: Services, clicked: str, method: str, path: str, headers: dict
) -> None:
    r = _call(app, method, path, headers)
    assert r.status_code == 401
    assert r.json == {"error": {"code": "unauthorized", "message": "missing or wrong bearer token"}}
    assert r.headers["WWW-Authenticate"].startswith("Bearer")  # RFC 6750 §3
    assert count(services, Conversion) == 0


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/admin/nothing", 404),
        ("DELETE", "/admin/conversions", 405),
        ("GET", "/admin/conversions/1/retry", 405),
    ],
)
def test_with_the_token_unknown_paths_and_methods_are_json_errors(
    admin: Admin, method: str, path: str, status: int
) -> None:
    r = admin.client.open(path, method=method, headers=admin.headers)
    assert r.status_code == status
    assert set(r.json["error"]) == {"code", "message"}


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_admin_api_is_off_without_a_token(
    make_app: Callable[..., Flask], method: str, path: str
) -> None:
    app = make_app(admin_token="")
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
        r = _call(app, method, path, headers)
        assert r.status_code == 503
        assert r.json["error"]["code"] == "admin_disabled"
        assert "WACONV_ADMIN_TOKEN" in r.json["error"]["message"]
    assert count(app.extensions["waconv"], Conversion) == 0


def test_the_right_token_passes(admin: Admin, clicked: str) -> None:
    assert admin.get("/admin/conversions").status_code == 200
    # The scheme is case-insensitive (RFC 7235).
    r = admin.client.get("/admin/conversions", headers={"Authorization": f"bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200


def test_the_token_never_appears_in_answers(admin: Admin, clicked: str) -> None:
    for r in (
        admin.get("/admin/openapi.json"),
        admin.get("/admin/conversions"),
        admin.mark(wa_id=clicked, event_name="LeadSubmitted"),
        admin.client.get("/admin/conversions", headers={"Authorization": "Bearer nope"}),
    ):
        assert ADMIN_TOKEN not in r.get_data(as_text=True)
