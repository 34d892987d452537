"""A delivery acknowledged with 200 survives `kill -9` of the server right after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from tests import payloads as p
from tests.conftest import APP_SECRET, VERIFY_TOKEN, encode, free_port, signed_headers
from tests.production.helpers import environment
from waconv.config import load_settings
from waconv.db import Database
from waconv.models import Message, WebhookDelivery
from waconv.services import Services
from waconv.webhooks import processor

ROOT = Path(__file__).resolve().parents[2]
DELIVERIES = 25
STARTUP_SECONDS = 30


def _command(server: str, port: int) -> list[str]:
    if server == "serve":
        return [sys.executable, "-m", "waconv.cli", "serve", "--no-dispatcher", "--port", str(port)]
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(ROOT / "config" / "gunicorn.conf.py"),
        "--chdir",
        str(ROOT),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "wsgi:app",
    ]


def _wait_until_healthy(http: requests.Session, url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited during start-up"
        try:
            with http.get(f"{url}/healthz", timeout=1) as r:
                if r.status_code == 200:
                    return
        except (requests.ConnectionError, requests.Timeout):  # not listening, or still booting
            pass
        time.sleep(0.1)  # polling for start-up, not a time rule
    pytest.fail("the server did not become healthy")


@pytest.mark.slow
@pytest.mark.parametrize("server", ["serve", "gunicorn"])
def test_acknowledged_deliveries_survive_kill_9(db_url, rules_path, tmp_path, server):
    port = free_port()
    env = environment(db_url, WACONV_RULES_FILE=str(rules_path), WACONV_BIND=f"127.0.0.1:{port}")
    log = tmp_path / "server.log"
    bodies = [
        encode(p.delivery(p.text(f"message {i}", ref=p.referral(), wa_id=f"1650555{i:04d}")))
        for i in range(DELIVERIES)
    ]
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            _command(server, port),
            cwd=tmp_path,  # dev secrets and instance/ never land in the repository
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            with requests.Session() as http:
                _wait_until_healthy(http, url, process)
                query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN}
                with http.get(f"{url}/webhook", params={**query, "hub.challenge": "9"}) as r:
                    assert (r.status_code, r.text) == (200, "9")
                for body in bodies:
                    with http.post(
                        f"{url}/webhook", data=body, headers=signed_headers(body), timeout=30
                    ) as r:
                        assert r.status_code == 200, r.text
                        assert r.json()["status"] == "stored"
                # Right after the last 200: no graceful shutdown, no chance to flush anything.
                os.killpg(process.pid, signal.SIGKILL)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    output = log.read_text()
    assert process.returncode == -signal.SIGKILL, output
    assert "GET /webhook" in output  # requests are logged, their secrets are not
    assert VERIFY_TOKEN not in output
    assert APP_SECRET not in output

    db = Database(db_url)
    try:
        with db.transaction() as session:
            stored = set(session.scalars(select(WebhookDelivery.body)))
    finally:
        db.dispose()
    assert stored == set(bodies)

    # What the killed process had not processed yet is processed by the next one to start.
    services = Services.build(
        load_settings(
            environ={},
            overrides={"database_url": db_url, "rules_file": str(rules_path)},
            dev_secrets_file=tmp_path / "none",
        )
    )
    try:
        processor.drain(services)
        with services.db.transaction() as session:
            texts = set(session.scalars(select(Message.text)))
            statuses = set(session.scalars(select(WebhookDelivery.status)))
    finally:
        services.close()
    assert texts == {f"message {i}" for i in range(DELIVERIES)}
    assert statuses == {WebhookDelivery.PROCESSED}
