"""Fixtures of the admin API tests: an authenticated client and conversations to mark."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update
from werkzeug.test import TestResponse

from tests import payloads as p
from tests.conftest import ADMIN_TOKEN
from waconv.models import Conversion
from waconv.services import Services

WA_ID = "16505551234"
OTHER_WA_ID = "16505559999"


class Admin:
    """The test client with the bearer token on every request."""

    def __init__(self, client: FlaskClient, token: str = ADMIN_TOKEN) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str, **query: Any) -> TestResponse:
        return self.client.get(path, query_string=query, headers=self.headers)

    def post(self, path: str, body: Any = None, *, raw: bytes | None = None) -> TestResponse:
        if raw is not None:
            return self.client.post(
                path, data=raw, headers={**self.headers, "Content-Type": "application/json"}
            )
        return self.client.post(path, json=body, headers=self.headers)

    def mark(self, **body: Any) -> TestResponse:
        return self.post("/admin/conversions", body)


@pytest.fixture
def admin(client: FlaskClient) -> Admin:
    return Admin(client)


@pytest.fixture
def clicked(post_webhook: Callable[..., Any]) -> str:
    """A conversation that started from an ad click; returns its wa_id."""
    r = post_webhook(p.delivery(p.message(ref=p.referral())))
    assert r.status_code == 200
    return WA_ID


@pytest.fixture
def not_clicked(post_webhook: Callable[..., Any]) -> str:
    """A conversation the user started without an ad; returns its wa_id."""
    r = post_webhook(
        p.delivery(p.text("hello", wa_id=OTHER_WA_ID), contacts=[p.contact(OTHER_WA_ID)])
    )
    assert r.status_code == 200
    return OTHER_WA_ID


def set_conversion(services: Services, conversion_id: int, **values: Any) -> None:
    """Put a conversion in a state, as the dispatcher would have."""
    with services.db.transaction() as session:
        session.execute(update(Conversion).where(Conversion.id == conversion_id).values(**values))
