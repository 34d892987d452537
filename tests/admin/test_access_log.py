"""Request logs name no customer: /admin/conversations/<wa_id> carries a phone number."""

from __future__ import annotations

import datetime as dt
import logging
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from gunicorn.config import Config

from tests.conftest import ADMIN_TOKEN
from tests.webhooks.helpers import live_server
from waconv.devserver import PathOnlyRequestHandler

ROOT = Path(__file__).resolve().parents[2]
WA_ID = "16505551234"


def test_gunicorn_access_log_of_the_production_config_has_no_user_id() -> None:
    conf = runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))
    cfg = Config()
    cfg.set("logger_class", conf["logger_class"])
    logger = cfg.logger_class(cfg)
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": f"/admin/conversations/{WA_ID}?phone_number_id=1",
        "PATH_INFO": f"/admin/conversations/{WA_ID}",
        "QUERY_STRING": "phone_number_id=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
    }
    resp = SimpleNamespace(status="200 OK", sent=10, headers=[])
    atoms = logger.atoms(resp, SimpleNamespace(headers=[]), environ, dt.timedelta(0))
    line = conf["access_log_format"] % atoms
    assert line.startswith('127.0.0.1 "GET /admin/conversations/[redacted]" 200 10 ')
    assert WA_ID not in str({k: atoms[k] for k in ("U", "r", "q")})


def test_dev_server_log_has_no_user_id(app, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with live_server(app, PathOnlyRequestHandler) as url, requests.Session() as http:
        r = http.get(
            f"{url}/admin/conversations/{WA_ID}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        )
        assert r.status_code == 404
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "GET /admin/conversations/[redacted]" in logged
    assert WA_ID not in logged
