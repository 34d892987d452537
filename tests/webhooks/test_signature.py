"""POST /webhook before any payload is trusted: size, signature, JSON (meta-api.md §1.3-1.4)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

import pytest

from tests import payloads as p
from tests.conftest import APP_SECRET, encode, signed_headers
from tests.webhooks.helpers import count, one
from waconv.models import Message, WebhookDelivery, WebhookNotice

BODY = encode(p.delivery(p.text("hello")))


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)


def _nothing_stored(services) -> bool:
    return count(services, WebhookDelivery) == 0 and count(services, Message) == 0


def test_missing_signature_is_401_and_nothing_is_stored(client, services):
    r = client.post("/webhook", data=BODY, headers={"Content-Type": "application/json"})
    assert r.status_code == 401
    assert r.json["error"]["code"] == "missing_signature"
    assert _nothing_stored(services)


@pytest.mark.parametrize(
    "header",
    [
        "sha256=" + "0" * 64,
        "sha256=" + hmac.new(b"another-secret", BODY, hashlib.sha256).hexdigest(),
        hmac.new(APP_SECRET.encode(), BODY, hashlib.sha256).hexdigest(),  # no sha256= prefix
        "sha1=" + hmac.new(APP_SECRET.encode(), BODY, hashlib.sha1).hexdigest(),
        "sha256=",
        "sha256=" + hmac.new(APP_SECRET.encode(), BODY, hashlib.sha256).hexdigest()[:-1],
        "sha256=" + "\u00e9" * 64,  # not ASCII: must be refused, not crash compare_digest
    ],
    ids=["zeros", "other-secret", "no-prefix", "sha1", "empty-digest", "truncated", "latin-1"],
)
def test_wrong_signature_is_403_and_nothing_is_stored(client, services, caplog, header):
    caplog.set_level(logging.DEBUG)
    r = client.post(
        "/webhook",
        data=BODY,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": header},
    )
    assert r.status_code == 403
    assert r.json["error"]["code"] == "bad_signature"
    assert _nothing_stored(services)
    assert APP_SECRET not in _logged(caplog)


def test_signature_of_another_body_is_403(client, services):
    other = encode(p.delivery(p.text("other")))
    r = client.post("/webhook", data=BODY, headers=signed_headers(other))
    assert r.status_code == 403
    assert _nothing_stored(services)


def test_uppercase_hex_digest_is_accepted(client, services):
    digest = hmac.new(APP_SECRET.encode(), BODY, hashlib.sha256).hexdigest().upper()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": "sha256=" + digest}
    r = client.post("/webhook", data=BODY, headers=headers)
    assert r.status_code == 200
    assert count(services, WebhookDelivery) == 1


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b'{"object": "whatsapp_business_account", "entry": [',
        b"\xff\xfe\x00garbage",
        b'[{"object": "whatsapp_business_account"}]',
        b'"a string"',
        b"42",
        b"null",
        b'{"entry": NaN}',  # not JSON (RFC 8259), though Python's parser takes it
        b'{"a": ' * 20000 + b"1" + b"}" * 20000,  # nesting beyond any parser's stack
        '{"object": "whatsapp_business_account"}'.encode("utf-16"),  # JSON is UTF-8 (RFC 8259)
    ],
    ids=[
        "text",
        "empty",
        "truncated",
        "binary",
        "array",
        "string",
        "number",
        "null",
        "nan",
        "deep",
        "utf-16",
    ],
)
def test_signed_body_that_is_not_a_json_object_is_400_and_nothing_is_stored(client, services, body):
    r = client.post("/webhook", data=body, headers=signed_headers(body))
    assert r.status_code == 400
    assert r.json["error"]["code"] == "bad_json"
    assert _nothing_stored(services)


def test_a_utf8_byte_order_mark_is_allowed(client, services):
    body = b"\xef\xbb\xbf" + encode({"object": "whatsapp_business_account", "entry": []})
    r = client.post("/webhook", data=body, headers=signed_headers(body))
    assert r.status_code == 200
    assert r.json["status"] == "stored"


def test_body_over_3_mib_is_413_and_nothing_is_stored(client, services):
    filler = "x" * (3 * 1024 * 1024)
    body = encode({"object": "whatsapp_business_account", "entry": [], "pad": filler})
    r = client.post("/webhook", data=body, headers=signed_headers(body))
    assert r.status_code == 413
    assert count(services, WebhookDelivery) == 0


def test_body_just_under_3_mib_is_accepted(client, services):
    envelope = encode({"object": "whatsapp_business_account", "entry": [], "pad": ""})
    pad = "x" * (3 * 1024 * 1024 - len(envelope))
    body = encode({"object": "whatsapp_business_account", "entry": [], "pad": pad})
    assert len(body) == 3 * 1024 * 1024
    r = client.post("/webhook", data=body, headers=signed_headers(body))
    assert r.status_code == 200
    assert count(services, WebhookDelivery) == 1


def test_app_secret_never_appears_in_logs(post_webhook, client, caplog):
    caplog.set_level(logging.DEBUG)
    assert post_webhook(p.delivery(p.text("hi"))).status_code == 200
    client.post("/webhook", data=BODY, headers={"X-Hub-Signature-256": "sha256=00"})
    client.post("/webhook", data=BODY)
    assert caplog.records  # something was logged, and none of it is the secret
    assert APP_SECRET not in _logged(caplog)


# --- Non-ASCII: Meta signs the escaped form it sends (meta-api.md §1.4) -----------------------


def test_non_ascii_text_signed_over_the_escaped_bytes_is_accepted(post_webhook, services):
    msg = p.text("Ol\u00e1, Jos\u00e9! \u00e4\u00f6\u00e5 \U0001f600")
    raw = encode(p.delivery(msg))
    assert b"Jos\\u00e9" in raw  # the escape is in the bytes on the wire
    r = post_webhook(None, raw=raw)
    assert r.status_code == 200, r.data
    stored = one(services, Message)
    assert stored.text == "Ol\u00e1, Jos\u00e9! \u00e4\u00f6\u00e5 \U0001f600"
    assert one(services, WebhookDelivery).body == raw


def test_signature_over_escaped_bytes_does_not_match_the_unescaped_body(client, services):
    payload = p.delivery(p.text("Jos\u00e9"))
    escaped = encode(payload)
    unescaped = json.dumps(payload, ensure_ascii=False).encode()
    assert escaped != unescaped and json.loads(escaped) == json.loads(unescaped)
    r = client.post("/webhook", data=unescaped, headers=signed_headers(escaped))
    assert r.status_code == 403  # we hash the raw bytes, never a re-serialisation
    assert _nothing_stored(services)


def test_unescaped_utf8_body_signed_over_its_own_bytes_is_accepted(client, services):
    raw = json.dumps(p.delivery(p.text("Jos\u00e9")), ensure_ascii=False).encode()
    r = client.post("/webhook", data=raw, headers=signed_headers(raw))
    assert r.status_code == 200
    assert one(services, Message).text == "Jos\u00e9"
    assert count(services, WebhookNotice) == 0
