"""Failing well: a database that is not migrated or not reachable gets a 503 that says why,
and every command one line naming the fix; never a 500, a traceback or a log line."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import text

from tests import payloads as p
from tests.conftest import (
    ADMIN_TOKEN,
    APP_SECRET,
    POSTGRES_URL,
    SECRET_KEY,
    VERIFY_TOKEN,
    encode,
    signed_headers,
)
from tests.webhooks.helpers import count
from waconv.cli import main
from waconv.db import make_engine
from waconv.models import WebhookDelivery

UNMIGRATED_SCHEMA = "waconv_unmigrated"


@pytest.fixture
def unmigrated_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A database of the same backend with none of waconv's tables (on PostgreSQL, a schema
    of its own, dropped afterwards: other tests read the catalog of the whole database)."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'never-migrated.sqlite3'}"
        return
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {UNMIGRATED_SCHEMA} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {UNMIGRATED_SCHEMA}"))
    try:
        yield f"{db_url}?options=-csearch_path%3D{UNMIGRATED_SCHEMA}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {UNMIGRATED_SCHEMA} CASCADE"))
        engine.dispose()


# --- the app on a database that was never migrated --------------------------------------------


def test_webhook_and_admin_answer_503_naming_the_upgrade_command(
    make_app: Callable[..., Flask], unmigrated_url: str
) -> None:
    client = make_app(database_url=unmigrated_url).test_client()
    body = encode(p.delivery(p.text("hello")))
    r = client.post("/webhook", data=body, headers=signed_headers(body))
    assert r.status_code == 503, r.data
    assert r.json["error"]["code"] == "not_migrated"
    assert "waconv db upgrade" in r.json["error"]["message"]

    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for path in ("/admin/conversions", "/admin/conversations/16505551234"):
        r = client.get(path, headers=auth)
        assert r.status_code == 503, (path, r.data)
        assert r.json["error"]["code"] == "not_migrated"
        assert "waconv db upgrade" in r.json["error"]["message"]
    r = client.post(
        "/admin/conversions", json={"wa_id": "16505551234", "event_name": "Lead"}, headers=auth
    )
    assert r.status_code == 400  # what is wrong with the request still comes first


def test_the_console_answers_a_page_naming_the_upgrade_command(
    make_app: Callable[..., Flask], unmigrated_url: str
) -> None:
    client = make_app(database_url=unmigrated_url).test_client()
    assert client.get("/console/login").status_code == 200  # the form needs no database
    r = client.post("/console/login", data={"token": ADMIN_TOKEN})
    assert r.status_code == 503, r.data
    assert r.mimetype == "text/html"
    assert b"waconv db upgrade" in r.data
    assert b"Traceback" not in r.data


# --- every command on a database that was never migrated --------------------------------------

COMMANDS = [
    ["db", "check"],
    ["dispatch", "--once"],
    ["prune"],
    ["webhooks", "replay", "--failed"],
    ["webhooks", "replay", "--id", "1"],
    ["accounts", "list"],
    ["accounts", "set", "--waba-id", "1", "--dataset-id", "2"],
    ["accounts", "set-token", "--waba-id", "1", "--token-stdin"],
    ["provision-dataset", "--waba-id", "1"],
    ["subscribe-app", "--waba-id", "1"],
    ["conversions", "list"],
    ["conversions", "mark", "--wa-id", "16505551234", "--event", "LeadSubmitted"],
    ["conversions", "retry", "1"],
    ["serve", "--no-dispatcher", "--port", "1"],
]


@pytest.fixture
def cli_env(rules_path: Path) -> Callable[[str], dict[str, str]]:
    def build(database_url: str) -> dict[str, str]:
        return {
            "WACONV_DATABASE_URL": database_url,
            "WACONV_APP_SECRET": APP_SECRET,
            "WACONV_VERIFY_TOKEN": VERIFY_TOKEN,
            "WACONV_SECRET_KEY": SECRET_KEY,
            "WACONV_RULES_FILE": str(rules_path),
            "WACONV_ACCESS_TOKEN": "a-token",
            "WACONV_GRAPH_URL": "http://127.0.0.1:1",
        }

    return build


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(argv[:2]) for argv in COMMANDS])
def test_every_command_but_upgrade_exits_1_with_one_line_naming_it(
    argv: list[str], unmigrated_url: str, cli_env: Callable[[str], dict[str, str]]
) -> None:
    result = CliRunner().invoke(main, argv, env=cli_env(unmigrated_url), input="a-token\n")
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "waconv db upgrade" in result.stderr


@pytest.mark.slow
def test_a_real_command_prints_only_the_one_line(
    unmigrated_url: str, cli_env: Callable[[str], dict[str, str]]
) -> None:
    # A process of its own: the real stderr, with the logging set-up a shell gets (CliRunner
    # shares the test process's handlers, which write elsewhere). Alembic's INFO lines
    # ("setup plugin ...") came before the one line.
    env = {**os.environ, **cli_env(unmigrated_url), "WACONV_LOG_LEVEL": "INFO"}
    result = subprocess.run(
        [sys.executable, "-m", "waconv.cli", "conversions", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "error: the database was never migrated: run `waconv db upgrade`\n"


def test_upgrade_then_the_commands_work(
    unmigrated_url: str, cli_env: Callable[[str], dict[str, str]]
) -> None:
    env = cli_env(unmigrated_url)
    assert CliRunner().invoke(main, ["db", "upgrade"], env=env).exit_code == 0
    listed = CliRunner().invoke(main, ["accounts", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "no accounts yet" in listed.stdout


def test_replay_of_an_unknown_delivery_exits_1_with_one_line(
    db_url: str, cli_env: Callable[[str], dict[str, str]]
) -> None:
    result = CliRunner().invoke(main, ["webhooks", "replay", "--id", "999"], env=cli_env(db_url))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "error: no stored delivery with id 999\n"


# --- the database going away and coming back -------------------------------------------------


class Outage:
    """A TCP relay on loopback between the app and PostgreSQL that can cut every connection
    and refuse new ones, as a database restart does, then let them through again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = True
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            server = socket.create_connection(self.target)
            with self.lock:
                self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.open.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def outage(db_url: str) -> Iterator[Outage]:
    from sqlalchemy.engine import make_url

    if not db_url.startswith("postgresql"):
        pytest.skip("the relay stands in front of PostgreSQL")
    url = make_url(POSTGRES_URL)
    relay = Outage((url.host or "127.0.0.1", url.port or 5432))
    yield relay
    relay.close()


def _via(port: int) -> str:
    from sqlalchemy.engine import make_url

    return make_url(POSTGRES_URL).set(host="127.0.0.1", port=port).render_as_string(False)


@pytest.mark.postgres_only
def test_webhook_while_the_database_is_down_is_503_and_recovers_without_a_restart(
    make_app: Callable[..., Flask], outage: Outage
) -> None:
    app = make_app(database_url=_via(outage.port))
    client = app.test_client()
    services: Any = app.extensions["waconv"]

    def post(text_body: str) -> Any:
        body = encode(p.delivery(p.text(text_body)))
        return client.post("/webhook", data=body, headers=signed_headers(body))

    assert post("before").status_code == 200
    outage.cut()
    down = post("during")
    assert down.status_code == 503, down.data
    assert down.headers["Retry-After"].isdigit()
    assert down.json["error"]["code"] == "database_unavailable"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    admin = client.get("/admin/conversions", headers=auth)
    assert admin.status_code == 503
    assert admin.headers["Retry-After"].isdigit()

    outage.restore()
    assert post("after").status_code == 200
    assert count(services, WebhookDelivery) == 2  # nothing of the refused one was stored
