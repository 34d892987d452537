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

import freezegun
import psycopg  # noqa: F401  (imported before freezegun freezes time: its C extension warns)
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Connection, Engine, create_engine, make_url, text

from waconv import create_app, db, schema
from waconv.config import Settings, load_settings
from waconv.db import Base, make_engine
from waconv.graph.fake import STOP_GRACE_SECONDS, FakeGraph
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

# pytest's own clock stays real while a test freezes time: --durations reported the frozen
# tests' setup as ~1.8e9 s (a test's frozen "now" minus a real start).
freezegun.configure(extend_ignore_list=["_pytest.timing"])


def _worker_database(url: str) -> str:
    """Under pytest-xdist (``make test`` runs a worker per core), each worker's own PostgreSQL
    database beside the configured one (``test`` -> ``test_gw0``), created if missing: the
    workers empty their tables after every test."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not url or not worker:
        return url
    configured = make_url(url)
    name = f"{configured.database}_{worker}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if not exists:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()
    return configured.set(database=name).render_as_string(hide_password=False)


_ENGINES: dict[tuple[Any, ...], Engine] = {}


def _shared_engine(url: str, **options: Any) -> Engine:
    """The run's one engine per URL and options, for every Database the tests build: an engine
    compiles each statement once (its cache, dialect and listeners outlive dispose(), which
    only replaces the pool), and a new engine per test compiled every statement again per test
    (a fifth of the admin tests' time)."""
    key = (url, *sorted(options.items()))
    if key not in _ENGINES:
        _ENGINES[key] = make_engine(url, **options)
    return _ENGINES[key]


db.make_engine = _shared_engine  # type: ignore[assignment]
POSTGRES_URL = _worker_database(os.environ.get("WACONV_TEST_POSTGRES_URL", ""))
# A PostgreSQL twin of each database test only when there is a PostgreSQL to run it on.
BACKENDS = ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]


class _Databases:
    """One migrated database per backend for the whole run, and one engine per backend to
    empty it after each test (an engine a test costs a connection and, on PostgreSQL, the
    dialect's first-connect queries)."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.urls: dict[str, str] = {}
        self.engines: dict[str, Engine] = {}

    def url(self, backend: str) -> str:
        if backend not in self.urls:
            if backend == "sqlite":
                url = f"sqlite:///{self.tmp_path_factory.mktemp('db') / 'waconv.sqlite3'}"
            else:
                url = POSTGRES_URL
            engine = make_engine(url)
            if backend == "postgresql":
                with engine.begin() as conn:
                    Base.metadata.drop_all(conn)
                    conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
                    _no_flush_per_commit(conn)
            schema.upgrade(engine)
            engine.dispose()  # the connections from now on have the database's settings
            self.urls[backend], self.engines[backend] = url, engine
        return self.urls[backend]

    def empty(self, backend: str) -> None:
        """Back to what the migrations left: no rows, and (PostgreSQL) ids from 1 again, as
        SQLite's rowids are once a table is empty."""
        engine = self.engines[backend]
        tables = reversed(Base.metadata.sorted_tables)
        # DELETE beats TRUNCATE on tables this small: TRUNCATE costs ~0.2 s a test on PostgreSQL.
        if backend == "postgresql":
            quote = engine.dialect.identifier_preparer.quote
            script = "".join(f"DELETE FROM {quote(table.name)};" for table in tables)  # noqa: S608
            with engine.begin() as conn:  # one round trip
                conn.exec_driver_sql(script + _RESTART_SEQUENCES)
        else:
            with engine.begin() as conn:
                for table in tables:
                    conn.execute(table.delete())
            # The last connection to close checkpoints and removes the WAL, as between runs.
            engine.dispose()

    def close(self) -> None:
        for engine in self.engines.values():
            engine.dispose()


def _no_flush_per_commit(conn: Connection) -> None:
    """Commits on the test database stop waiting for the disk (2.6-4.5 ms each measured on a
    busy machine, 0.2 ms without). Only a crash of the PostgreSQL server itself could lose
    the last commits, which no test does; killed app processes lose nothing still."""
    database = conn.exec_driver_sql("SELECT current_database()").scalar_one()
    quoted = conn.dialect.identifier_preparer.quote(database)
    conn.exec_driver_sql(f"ALTER DATABASE {quoted} SET synchronous_commit = off")


_RESTART_SEQUENCES = (
    "SELECT setval(c.oid::regclass, 1, false) FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind = 'S' AND n.nspname = current_schema();"
)


@pytest.fixture(scope="session")
def _databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Databases]:
    databases = _Databases(tmp_path_factory)
    yield databases
    databases.close()


_ONLY = {"postgres_only": "postgresql", "sqlite_only": "sqlite"}  # mark -> its one backend


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``postgres_only`` (or ``sqlite_only``) runs on that backend alone: its
    other twin is left out, not collected to be skipped."""
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("db_url") if callspec is not None else None
        only = {b for mark, b in _ONLY.items() if item.get_closest_marker(mark) is not None}
        (left_out if backend is not None and only and backend not in only else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept
    for item in items:
        if item.get_closest_marker("slow") or item.get_closest_marker("browser"):
            # They start processes (gunicorn, processors, dispatchers, Chromium) and hold them
            # to deadlines. Under ``make test`` (pytest-xdist, --dist loadgroup) they run one
            # at a time on one worker: two at once on two cores starved the niced processors
            # past their deadlines; the other worker's in-process tests leave them a core.
            item.add_marker(pytest.mark.xdist_group("processes"))


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, _databases: _Databases) -> Iterator[str]:
    backend = request.param
    yield _databases.url(backend)
    _databases.empty(backend)


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


@pytest.fixture(scope="session")
def _graph_server() -> Iterator[FakeGraph]:
    """One fake Graph API for the run: starting and stopping one costs ~30 ms a test."""
    with FakeGraph() as fake:
        yield fake


# What a test may not change on the fake: its server, thread and the lock its threads share.
_FAKE_KEEPS = frozenset({"lock", "_stopping", "_server", "_thread"})


def _close_connections(fake: FakeGraph) -> None:
    """What stopping a fake did to what a test left: every connection closed and a "timeout"
    fault that is still waiting woken."""
    server = fake._server
    if server is None:
        return
    fake._stopping.set()
    server.close_all_connections(STOP_GRACE_SECONDS)
    fake._stopping.clear()
    with server.connections_changed:
        server.connections_opened = 0


def reset_fake(fake: FakeGraph) -> None:
    """Make a running fake what a new one is: no connection (so ``connections_opened``
    counts from 0), no recording, no fault, default configuration, no attribute a test set;
    restarted if a test stopped it."""
    if fake._server is None:
        fake.start()
    _close_connections(fake)
    fresh = vars(FakeGraph())
    for name in list(vars(fake)):
        if name not in fresh:
            delattr(fake, name)  # e.g. a ``_route`` a test patched on the instance
    for name, value in fresh.items():
        if name not in _FAKE_KEEPS:
            setattr(fake, name, value)


@pytest.fixture
def fake_graph(_graph_server: FakeGraph) -> Iterator[FakeGraph]:
    reset_fake(_graph_server)
    yield _graph_server
    # The rest of the reset waits for the next test: a monkeypatch may still undo its change.
    _close_connections(_graph_server)


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
