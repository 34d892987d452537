"""GET /webhook: Meta's verification handshake (meta-api.md §1.2)."""

from __future__ import annotations

import logging

import pytest
import requests
from werkzeug.serving import WSGIRequestHandler

from tests.conftest import VERIFY_TOKEN
from tests.webhooks.helpers import live_server
from waconv.devserver import PathOnlyRequestHandler

CHALLENGE = "1158201444"


def _all_logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record as handlers would render it, arguments included."""
    return "\n".join(
        f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )


def test_good_token_echoes_the_challenge_as_plain_text(client, caplog):
    caplog.set_level(logging.DEBUG)
    r = client.get(
        "/webhook",
        query_string={
            "hub.mode": "subscribe",
            "hub.verify_token": VERIFY_TOKEN,
            "hub.challenge": CHALLENGE,
        },
    )
    assert r.status_code == 200
    assert r.data == CHALLENGE.encode()  # verbatim: not JSON, not an int
    assert r.mimetype == "text/plain"
    assert VERIFY_TOKEN not in _all_logged(caplog)


def test_challenge_is_returned_verbatim_even_when_not_digits(client):
    challenge = "a-b_c 0042"
    r = client.get(
        "/webhook",
        query_string={
            "hub.mode": "subscribe",
            "hub.verify_token": VERIFY_TOKEN,
            "hub.challenge": challenge,
        },
    )
    assert r.status_code == 200
    assert r.get_data(as_text=True) == challenge


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": CHALLENGE},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN + "x", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.verify_token": VERIFY_TOKEN, "hub.challenge": CHALLENGE},
        {"hub.mode": "subscribe", "hub.challenge": CHALLENGE},
        {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": CHALLENGE},
        {"hub.mode": "subscribe", "hub.verify_token": "t\u00e9st", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": ""},
        {},
    ],
    ids=[
        "wrong-token",
        "token-prefix",
        "wrong-mode",
        "no-mode",
        "no-token",
        "empty-token",
        "non-ascii-token",
        "no-challenge",
        "empty-challenge",
        "nothing",
    ],
)
def test_refused_handshakes_answer_403_without_the_challenge(client, caplog, query):
    caplog.set_level(logging.DEBUG)
    r = client.get("/webhook", query_string=query)
    assert r.status_code == 403
    assert CHALLENGE.encode() not in r.data
    assert VERIFY_TOKEN not in _all_logged(caplog)


@pytest.mark.parametrize("handler", [PathOnlyRequestHandler, WSGIRequestHandler])
def test_verify_token_is_not_logged_by_a_real_server_either(app, caplog, handler):
    """Werkzeug's request log line carries the query string, token included, unless stripped
    (``waconv serve``) or redacted (any handler of a configured app)."""
    caplog.set_level(logging.DEBUG)
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "7"}
    with (
        live_server(app, handler) as url,
        requests.Session() as http,
        http.get(f"{url}/webhook", params=query, timeout=10) as r,
    ):
        assert r.status_code == 200
        assert r.text == "7"
    logged = _all_logged(caplog)
    assert "GET /webhook" in logged  # the request line was logged
    assert VERIFY_TOKEN not in logged
