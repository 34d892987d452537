"""Property-based fuzzing of POST /webhook: garbage is a 200 or a 400, never a 5xx.

Two generators: arbitrary JSON, and valid Meta payloads with a few of their fields removed or
replaced by values of the wrong type (numbers for strings, lists for objects, null, huge
strings, nested garbage). The database is not reset between examples: the app must keep
working after every one of them.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import payloads as p
from tests.conftest import encode, signed_headers
from tests.webhooks.helpers import count, one, rows
from waconv.models import Message, WebhookDelivery

# Examples per test and backend: enough to find type confusion, bounded for a ~60 s suite.
EXAMPLES = {"sqlite": 150, "postgresql": 60}

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["", "0", "1750275992", "wamid.X", "text", "messages", p.CLICK_ID])
)
huge_strings = st.integers(min_value=256, max_value=70_000).map(lambda n: "\u00e9x" * (n // 2))
garbage = st.recursive(
    scalars | huge_strings,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=20), garbage, max_size=6)
# What else a signed body can be: other JSON values, NaN and friends, bytes that are not JSON.
not_objects = (
    garbage.filter(lambda v: not isinstance(v, dict)).map(encode)
    | st.dictionaries(st.text(max_size=5), st.floats(), min_size=1, max_size=3)
    .filter(lambda d: not all(math.isfinite(v) for v in d.values()))
    .map(encode)
    | st.binary(max_size=300)
)
# Envelopes that reach past the first checks into the entry/change walk.
shaped = st.fixed_dictionaries(
    {
        "object": st.just("whatsapp_business_account") | garbage,
        "entry": st.lists(
            st.fixed_dictionaries(
                {
                    "id": st.just("102290129340398") | garbage,
                    "changes": st.lists(
                        st.fixed_dictionaries(
                            {
                                "field": st.sampled_from(["messages", "automatic_events"])
                                | garbage,
                                "value": garbage,
                            }
                        ),
                        max_size=3,
                    )
                    | garbage,
                }
            ),
            max_size=3,
        )
        | garbage,
    }
)


# Rules of every trigger, so that garbage also reaches rule matching and custom_data building.
RULES = """
[[rules]]
name = "any-message"
on = "message"
event = "LeadSubmitted"
once = false

[[rules]]
name = "cart"
on = "order"
event = "InitiateCheckout"
once = false

[[rules]]
name = "purchase"
on = "automatic_event"
match = "^Purchase$"
event = "Purchase"
once = false
"""


def _valid_payloads() -> list[Callable[[], dict[str, Any]]]:
    now = int(time.time())  # recent: conversions are validated, not expired at once
    items = [
        {"product_retailer_id": "di9ozbzfi4", "quantity": 2, "item_price": 7.99, "currency": "USD"}
    ]
    return [
        lambda: p.delivery(p.text("price?", ts=now, ref=p.referral())),
        lambda: p.delivery(p.media("audio", ref=p.referral(ctwa_clid=None))),
        lambda: p.delivery(
            p.button_reply("Buy", ts=now), p.list_reply("Express"), p.button("Stop", ts=now)
        ),
        lambda: p.delivery(
            p.order(items, ts=now, ref=p.referral()),
            p.location(),
            p.contacts_message(),
            p.reaction(),
        ),
        lambda: p.delivery(p.unsupported(), p.changed_number("16505551234", "16505550000")),
        lambda: p.delivery(
            p.text("hola", wa_id=None), contacts=[p.contact(wa_id=None, user_id=p.USER_ID)]
        ),
        lambda: p.envelope(
            p.change(
                statuses=[
                    p.status("wamid.S", "sent", pricing=True),
                    p.status("wamid.S", "failed", errors=[p.error(131049)]),
                ],
                errors=[p.error()],
            ),
            p.automatic_events_change(
                [p.automatic_event(ts=now, custom_data={"currency": "USD", "value": 25000})]
            ),
            p.account_update_change(),
        ),
    ]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside the payload (not the root)."""
    found: list[tuple] = []
    children = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in children:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


@st.composite
def mutated_payloads(draw: st.DrawFn) -> dict[str, Any]:
    payload = draw(st.sampled_from(_valid_payloads()))()
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(payload)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = payload
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[key]
        else:
            parent[key] = draw(garbage)
    return payload


def _run(db_url: str, client, strategy: st.SearchStrategy, check: Callable[[bytes, Any], None]):
    """Post every generated body (bytes, or a payload to encode) signed, and check the answer."""
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"

    @settings(
        max_examples=EXAMPLES[backend],
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(strategy)
    def fuzz(generated: Any) -> None:
        body = generated if isinstance(generated, bytes) else encode(generated)
        r = client.post("/webhook", data=body, headers=signed_headers(body))
        check(body, r)

    fuzz()


def _still_works(client, services) -> None:
    before = count(services, Message)
    body = encode(p.delivery(p.text("after the storm", wa_id="15550009999")))
    r = client.post("/webhook", data=body, headers=signed_headers(body))
    assert r.status_code == 200
    assert r.json["status"] == "stored"
    assert count(services, Message) == before + 1


def test_arbitrary_bodies_never_yield_a_5xx(db_url, client, services):
    def check(body: bytes, r: Any) -> None:
        assert r.status_code in (200, 400), (r.status_code, r.data[:300])
        if r.status_code == 400:
            assert r.json["error"]["code"] == "bad_json"
            digest = hashlib.sha256(body).hexdigest()
            assert count(services, WebhookDelivery, WebhookDelivery.body_sha256 == digest) == 0
        else:
            assert r.json["status"] in ("stored", "duplicate"), body[:2000]

    _run(db_url, client, json_objects | shaped | not_objects, check)
    _still_works(client, services)


def test_mutated_meta_payloads_are_stored_and_processed(db_url, make_app, rules_path):
    """Odd items become notices: the delivery itself must process, never fail as a whole."""
    rules_path.write_text(RULES)
    app = make_app()
    client, services = app.test_client(), app.extensions["waconv"]

    def check(body: bytes, r: Any) -> None:
        assert r.status_code == 200, (r.status_code, r.data[:300])
        assert r.json["status"] in ("stored", "duplicate"), body[:2000]

    _run(db_url, client, mutated_payloads(), check)
    _still_works(client, services)
    assert count(services, WebhookDelivery, WebhookDelivery.status == "failed") == 0


def test_json_that_python_reads_but_databases_refuse(post_webhook, services, admin_headers):
    """NUL, lone surrogates and huge numbers are valid JSON; they must not cost the delivery."""
    msg = p.text("nul \u0000 and lone \ud800 inside", ref=p.referral(source_id="1\u00002"))
    msg["context"] = {"n": 2**80, "f": 1e308, "k\u0000": "v"}
    raw = encode(p.delivery(msg, p.text("the other message", wa_id="15550001111")))
    assert b"\\u0000" in raw and b"\\ud800" in raw
    r = post_webhook(None, raw=raw)
    assert r.status_code == 200
    assert r.json["status"] == "stored"
    texts = sorted(m.text for m in rows(services, Message))
    assert texts == ["nul \ufffd and lone ? inside", "the other message"]
    assert one(services, WebhookDelivery).body == raw  # the original, byte for byte


def _nested(depth: int) -> list:
    root: list = []
    node = root
    for _ in range(depth - 1):
        node.append([])
        node = node[0]
    return root


def test_deep_nesting_the_parser_accepts_does_not_fail_processing(post_webhook, services):
    """The deepest body the parser takes (it depends on the stack) must also process."""
    for depth in range(1000, 0, -10):
        payload = p.delivery(p.text("hi"))
        payload["pad"] = _nested(depth)
        try:
            raw = encode(payload)
        except RecursionError:  # too deep for this test's own encoder
            continue
        r = post_webhook(None, raw=raw)
        if r.status_code == 400:  # deeper than the parser goes: refused, nothing stored
            assert count(services, WebhookDelivery) == 0
            continue
        assert r.status_code == 200
        assert r.json["status"] == "stored", one(services, WebhookDelivery).error
        break
    assert depth > 500
    assert count(services, Message) == 1
