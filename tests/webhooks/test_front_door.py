"""FrontDoor: ``POST /webhook`` answered before Flask's routing, and what it leaves to Flask."""

from __future__ import annotations

import io
import json
import logging
import sys
from typing import Any

import pytest

from tests import payloads as p
from tests.conftest import encode, signed_headers
from tests.webhooks.helpers import count, live_server
from waconv.models import WebhookDelivery
from waconv.webhooks import ingest

BODY = encode(p.delivery(p.text("hello")))


def _call(
    app, body: bytes, headers: dict[str, str], *, length: str | None, door: bool = True
) -> tuple[str, Any]:
    """One POST /webhook through the app's WSGI callable, as a server would make it (with
    ``door=False``, straight to Flask's, as the front door passes a request on)."""
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/webhook",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "CONTENT_TYPE": "application/json",
    }
    if length is None:  # a chunked request: the server ends the stream, no length is known
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = length
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    seen: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], exc=None) -> None:
        seen["status"], seen["headers"] = status, dict(response_headers)

    callable_ = app if door else app.wsgi_app.app
    body_out = b"".join(callable_(environ, start_response))
    return seen["status"], (seen["headers"], json.loads(body_out))


@pytest.fixture
def flask_only(app, monkeypatch):
    """Count the requests that reached Flask's own dispatch (past the front door)."""
    reached = []
    original = app.full_dispatch_request

    def counting():
        reached.append(1)
        return original()

    monkeypatch.setattr(app, "full_dispatch_request", counting)
    return reached


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({}, BODY, "401 UNAUTHORIZED", "missing_signature"),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, BODY, "403 FORBIDDEN", "bad_signature"),
        (signed_headers(b"[1]"), b"[1]", "400 BAD REQUEST", "bad_json"),
    ],
)
def test_rejections_are_answered_at_the_door_as_the_view_answers_them(
    app, services, flask_only, headers, body, status, code
):
    at_door = _call(app, body, headers, length=str(len(body)))
    chunked = _call(app, body, headers, length=None)
    assert flask_only == []
    in_view = _call(app, body, headers, length=str(len(body)), door=False)
    assert flask_only == [1]
    assert at_door[0] == chunked[0] == in_view[0] == status
    assert at_door[1][1] == chunked[1][1] == in_view[1][1]
    assert at_door[1][1]["error"]["code"] == code
    assert count(services, WebhookDelivery) == 0


def test_a_delivery_is_stored_at_the_door_and_its_redelivery_is_a_duplicate(
    app, services, flask_only
):
    status, (headers, answer) = _call(app, BODY, signed_headers(BODY), length=str(len(BODY)))
    assert status == "200 OK" and flask_only == []
    assert headers["Content-Type"] == "application/json"
    assert answer["status"] == "stored"
    # The same delivery through the view: the same row, no second effect.
    status, (_, again) = _call(app, BODY, signed_headers(BODY), length=str(len(BODY)), door=False)
    assert status == "200 OK" and flask_only == [1]
    assert again == {"status": "duplicate", "delivery_id": answer["delivery_id"]}
    assert count(services, WebhookDelivery) == 1


def _padded_to(size: int) -> bytes:
    """A signed-able delivery of exactly ``size`` bytes."""
    empty = encode({"object": "whatsapp_business_account", "entry": [], "pad": ""})
    body = encode(
        {"object": "whatsapp_business_account", "entry": [], "pad": "x" * (size - len(empty))}
    )
    assert len(body) == size
    return body


def test_a_chunked_delivery_is_stored_at_the_door(app, services, flask_only):
    status, (_, answer) = _call(app, BODY, signed_headers(BODY), length=None)
    assert status == "200 OK" and flask_only == []
    assert answer["status"] == "stored"
    assert count(services, WebhookDelivery) == 1


@pytest.mark.parametrize(
    ("size", "status"),
    [(3 * 1024 * 1024, "200 OK"), (3 * 1024 * 1024 + 1, "413 REQUEST ENTITY TOO LARGE")],
)
def test_a_chunked_body_is_held_to_the_3_mib_limit(app, services, size, status):
    # Without a length, the body used to be cut at the limit and its signature failed: a 403
    # instead of the 413 a body with Content-Length gets.
    body = _padded_to(size)
    answer_status, (_, answer) = _call(app, body, signed_headers(body), length=None)
    assert answer_status == status
    if size > 3 * 1024 * 1024:
        assert answer["error"]["code"] == "request_entity_too_large"
        assert count(services, WebhookDelivery) == 0
    else:
        assert answer["status"] == "stored"


def test_a_body_over_the_limit_goes_to_flask_for_its_413(app, services, flask_only):
    status, (_, answer) = _call(app, b"", {}, length=str(3 * 1024 * 1024 + 1))
    assert status.startswith("413") and flask_only == [1]
    assert answer["error"]["code"] == "request_entity_too_large"


@pytest.mark.parametrize("length", ["", "-1", "1e3", "\u00b2", " 12"])
def test_a_content_length_that_is_not_a_number_goes_to_flask(app, services, flask_only, length):
    status, _ = _call(app, BODY, signed_headers(BODY), length=length)
    assert flask_only == [1]
    assert not status.startswith("500")


def test_a_client_that_leaves_mid_body_stores_nothing(app, services):
    status, _ = _call(app, BODY[:100], signed_headers(BODY), length=str(len(BODY)))
    assert status.startswith("400")
    assert count(services, WebhookDelivery) == 0


def test_a_store_that_fails_once_is_tried_again_in_the_view(app, services, monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    real = ingest.receive
    failures = []

    def flaky(services, raw, payload):
        if not failures:
            failures.append(1)
            raise ConnectionError("server closed the connection unexpectedly")
        return real(services, raw, payload)

    monkeypatch.setattr(ingest, "receive", flaky)
    status, (_, answer) = _call(app, BODY, signed_headers(BODY), length=str(len(BODY)))
    assert status == "200 OK" and answer["status"] == "stored"
    assert count(services, WebhookDelivery) == 1
    assert "webhook.delivery.retrying in the view after ConnectionError" in caplog.text


def test_a_store_that_keeps_failing_is_a_json_500_and_nothing_is_stored(app, services, monkeypatch):
    def broken(services, raw, payload):
        raise ConnectionError("database is down")

    monkeypatch.setattr(ingest, "receive", broken)
    status, (_, answer) = _call(app, BODY, signed_headers(BODY), length=str(len(BODY)))
    assert status.startswith("500")
    assert answer["error"]["code"] == "internal_error"
    assert count(services, WebhookDelivery) == 0


def test_other_routes_pass_through(app, client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/webhook").status_code == 403  # the handshake, refused: Flask's view
    assert client.put("/webhook", data=BODY).status_code == 405


def test_over_real_http(app, services):
    import requests

    with live_server(app) as url:
        r = requests.post(url + "/webhook", data=BODY, headers=signed_headers(BODY), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "stored"
    assert r.headers["Content-Length"] == str(len(r.content))
    assert count(services, WebhookDelivery) == 1
