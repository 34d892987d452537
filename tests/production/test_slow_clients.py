"""Slow clients against the documented production command (README "Production"):
connections that send their headers and never finish their body must not starve the others."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from pathlib import Path

import pytest
import requests

from tests import payloads as p
from tests.conftest import encode, free_port, signed_headers
from tests.production.helpers import ROOT, environment, spawn, wait_healthy

pytestmark = pytest.mark.slow

SLOW_CLIENTS = 16
ANSWER_SECONDS = 1.0
# A body announced and never sent: what a slowloris, or a client on a dying network, does.
STALLED_REQUEST = (
    b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"X-Hub-Signature-256: sha256=00\r\nContent-Length: 100000\r\n\r\n{"
)


def production_command() -> list[str]:
    # README: gunicorn -c config/gunicorn.conf.py wsgi:app, bound with WACONV_BIND.
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "config" / "gunicorn.conf.py"),
        "wsgi:app",
    ]


def test_healthz_and_a_signed_webhook_answer_within_a_second_beside_16_stalled_bodies(
    db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = environment(db_url, WACONV_BIND=f"127.0.0.1:{port}")
    with (
        spawn("web", production_command(), env, tmp_path) as server,
        contextlib.ExitStack() as stack,
    ):
        wait_healthy(server, url)
        stalled = []
        for _ in range(SLOW_CLIENTS):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            sock.sendall(STALLED_REQUEST)
            stalled.append(sock)
        time.sleep(0.5)  # every stalled request is taken by the server and waits for its body
        with requests.Session() as http:
            for i in range(8):  # new connections each time: they land on every worker
                http.headers["Connection"] = "close"
                started = time.monotonic()
                r = http.get(f"{url}/healthz", timeout=5)
                took = time.monotonic() - started
                assert r.status_code == 200
                assert took < ANSWER_SECONDS, f"/healthz took {took:.2f} s"

                body = encode(p.delivery(p.text(f"still there? {i}")))
                started = time.monotonic()
                r = http.post(f"{url}/webhook", data=body, headers=signed_headers(body), timeout=5)
                took = time.monotonic() - started
                assert r.status_code == 200, r.text
                assert took < ANSWER_SECONDS, f"POST /webhook took {took:.2f} s"
