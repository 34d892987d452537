"""Shared fixtures: the app on SQLite and (when configured) PostgreSQL, a fake Graph API on
loopback, and helpers to sign deliveries as Meta does.

Each test runs against a schema built by the real migrations; tables are emptied after it.
Tests that use the ``db_url`` fixture (directly or through ``app``) run once per backend.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg  # noqa: F401  (imported before freezegun freezes time: its C extension warns)
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from waconv import create_app, schema
from waconv.config import Settings, load_settings
from waconv.db import Base, make_engine
from waconv.graph.fake import FakeGraph
from waconv.services import Services
from waconv.webhooks.signature import sign

APP_SECRET = "test-app-secret"
VERIFY_TOKEN = "test-verify-token"
ADMIN_TOKEN = "test-admin-token"
SECRET_KEY = "test-secret-key"
ACCESS_TOKEN = "test-token"
WABA_ID = "102290129340398"
PHONE_NUMBER_ID = "106540352242922"
DATASET_ID = "987654321012345"

POSTGRES_URL = os.environ.get("WACONV_TEST_POSTGRES_URL", "")
BACKENDS = ["sqlite", "postgresql"]


def _reset_postgres(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


@pytest.fixture(scope="session")
def _migrated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One migrated database per backend for the whole run."""
    return {}


@pytest.fixture(params=BACKENDS)
def db_url(
    request: pytest.FixtureRequest,
    _migrated: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    backend = request.param
    if backend == "postgresql" and not POSTGRES_URL:
        pytest.skip("WACONV_TEST_POSTGRES_URL is not set")
    if backend not in _migrated:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'waconv.sqlite3'}"
        else:
            url = POSTGRES_URL
            _reset_postgres(url)
        engine = make_engine(url)
        schema.upgrade(engine)
        engine.dispose()
        _migrated[backend] = url
    url = _migrated[backend]
    yield url
    _empty_tables(url)


def _empty_tables(url: str) -> None:
    engine = make_engine(url)
    # DELETE beats TRUNCATE on tables this small: TRUNCATE costs ~0.2 s a test on PostgreSQL.
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture(autouse=True)
def keep_root_logging() -> Iterator[None]:
    """CLI commands configure the root logger (a handler bound to CliRunner's stream, which
    is closed after the command): undo it after every test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def fake_graph() -> Iterator[FakeGraph]:
    with FakeGraph() as fake:
        yield fake


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text("# no rules\n")
    return path


@pytest.fixture
def make_settings(
    db_url: str, fake_graph: FakeGraph, rules_path: Path, tmp_path: Path
) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": db_url,
            "verify_token": VERIFY_TOKEN,
            "app_secret": APP_SECRET,
            "admin_token": ADMIN_TOKEN,
            "secret_key": SECRET_KEY,
            "access_token": ACCESS_TOKEN,
            "graph_url": fake_graph.url,
            "rules_file": str(rules_path),
            "graph_timeout_seconds": 5.0,
            # Effects visible when the test client returns; tests/webhooks/test_background.py
            # covers the background processor that production uses.
            "webhook_processing": "inline",
        }
        values.update(overrides)
        return load_settings(environ={}, overrides=values, dev_secrets_file=tmp_path / "none")

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def make_app(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def build(**overrides: Any) -> Flask:
        app = create_app(settings=make_settings(**overrides))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["waconv"].close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def services(app: Flask) -> Services:
    services: Services = app.extensions["waconv"]
    return services


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def free_port() -> int:
    """A loopback port nothing listens on (once the probing socket is closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def signed_headers(body: bytes, secret: str = APP_SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Hub-Signature-256": sign(secret, body)}


def encode(payload: Any) -> bytes:
    """JSON as Meta sends it: non-ASCII escaped as \\uXXXX."""
    return json.dumps(payload).encode()


@pytest.fixture
def post_webhook(client: FlaskClient) -> Callable[..., Any]:
    def post(payload: Any, *, raw: bytes | None = None) -> Any:
        body = raw if raw is not None else encode(payload)
        return client.post("/webhook", data=body, headers=signed_headers(body))

    return post


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
