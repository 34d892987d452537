from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from waconv.rules import (
    MESSAGE_TYPES,
    TRIGGERS,
    Rule,
    RulesError,
    RuleSet,
    load_rules,
    parse_rules,
)

DEFAULT_RULES = Path(__file__).resolve().parents[2] / "config" / "rules.toml"

CONTRACT_EXAMPLE = r"""
[[rules]]
name = "asked-for-price"        # unique; part of the event_id of what it fires
on = "message"                  # message | order | automatic_event
match = "(?i)\\b(price|buy)\\b"  # optional regex on the text, button text or reply title
event = "LeadSubmitted"         # one of the 14 business-messaging event names
once = true                     # at most once per conversation and click (default true)

[[rules]]
name = "cart-sent"
on = "order"                    # custom_data: value, currency, contents, num_items
event = "InitiateCheckout"
"""


def _rule(body: str, source: str = "rules.toml") -> Rule:
    rules = parse_rules("[[rules]]\n" + body, source).rules
    assert len(rules) == 1
    return rules[0]


def _error(text: str, source: str = "config/rules.toml") -> str:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, source)
    return str(caught.value)


# --- files that load --------------------------------------------------------------------------


def test_contract_example_loads() -> None:
    ruleset = parse_rules(CONTRACT_EXAMPLE)
    price, cart = ruleset.rules
    assert price.name == "asked-for-price"
    assert price.on == "message"
    assert price.event == "LeadSubmitted"
    assert price.once is True
    assert price.match is not None
    assert price.match.pattern == r"(?i)\b(price|buy)\b"
    assert price.custom_data is None
    assert price.message_types is None
    assert cart.on == "order"
    assert cart.match is None
    assert cart.once is True, "once defaults to true"


def test_default_file_loads() -> None:
    ruleset = load_rules(DEFAULT_RULES)
    names = [rule.name for rule in ruleset.rules]
    assert names == ["asked-for-price", "tapped-add-to-cart", "tapped-buy", "cart-sent"]
    assert ruleset.for_trigger("automatic_event") == (), "automatic events are off by default"


def test_default_file_commented_automatic_rule_loads_when_uncommented() -> None:
    text = DEFAULT_RULES.read_text(encoding="utf-8")
    start = text.index('# name = "meta-detected-purchase"') - len("# [[rules]]\n")
    uncommented = "\n".join(line.removeprefix("# ") for line in text[start:].splitlines())
    ruleset = parse_rules(text + "\n" + uncommented)
    (rule,) = ruleset.for_trigger("automatic_event")
    assert rule.event == "Purchase"
    assert rule.matches("Purchase")
    assert not rule.matches("LeadSubmitted")


@pytest.mark.parametrize(
    ("text", "message_type", "rule"),
    [
        ("What's the price?", "text", "asked-for-price"),
        ("how much is it", "text", "asked-for-price"),
        ("Add to cart", "button", "tapped-add-to-cart"),
        ("Buy now", "interactive", "tapped-buy"),
        ("Order", "button", "tapped-buy"),
        ("Checkout", "interactive", "tapped-buy"),
    ],
)
def test_default_rules_match_a_shop_conversation(text: str, message_type: str, rule: str) -> None:
    ruleset = load_rules(DEFAULT_RULES)
    fired = [r.name for r in ruleset.for_trigger("message") if r.matches(text, message_type)]
    assert rule in fired


def test_default_buttons_do_not_fire_on_typed_text() -> None:
    ruleset = load_rules(DEFAULT_RULES)
    fired = [r.name for r in ruleset.for_trigger("message") if r.matches("Order", "text")]
    assert fired == []


@pytest.mark.parametrize("text", ["", "\n# only comments\n", "rules = []\n"])
def test_file_without_rules_is_valid(text: str) -> None:
    ruleset = parse_rules(text)
    assert ruleset.rules == ()
    assert len(ruleset) == 0
    for on in TRIGGERS:
        assert ruleset.for_trigger(on) == ()


def test_empty_ruleset() -> None:
    assert RuleSet.empty().rules == ()
    assert RuleSet.empty().for_trigger("message") == ()
    assert RuleSet.empty() == RuleSet(())


def test_load_rules_from_a_path_or_string(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(CONTRACT_EXAMPLE, encoding="utf-8")
    assert load_rules(path) == load_rules(str(path))
    assert len(load_rules(path)) == 2


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(RulesError, match=re.escape(f"{path}: rules file not found")):
        load_rules(path)


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n")
    with pytest.raises(RulesError, match=re.escape(f"{path}: cannot read")):
        load_rules(path)


def test_errors_of_a_loaded_file_name_it(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[[rules]]\nname = "x"\non = "message"\nevent = "Lead"\n', encoding="utf-8")
    with pytest.raises(RulesError, match=re.escape(f"{path}: rule 'x': key 'event'")):
        load_rules(path)


# --- errors -----------------------------------------------------------------------------------


def test_error_message_names_file_rule_and_key() -> None:
    message = _error('[[rules]]\nname = "asked-for-price"\non = "message"\nevent = "Lead"\n')
    assert message.startswith(
        "config/rules.toml: rule 'asked-for-price': key 'event': "
        "event_name 'Lead' is not a business-messaging event (did you mean 'LeadSubmitted'?); "
        "use one of: AddToCart, CartAbandoned,"
    )


def test_not_toml() -> None:
    assert _error("[[rules]\nname = 1").startswith("config/rules.toml: not valid TOML:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[rule]]\nname = 'a'\n", "unknown top-level key 'rule'"),
        ("name = 'a'\n", "unknown top-level key 'name'"),
        ("rules = 'a'\n", "'rules' must be a list"),
        ("rules = [1]\n", "rules[0]: must be a table"),
    ],
)
def test_file_shape_errors(text: str, expected: str) -> None:
    assert expected in _error(text)


GOOD = {"name": '"r"', "on": '"message"', "event": '"LeadSubmitted"'}


def _toml(**keys: str | None) -> str:
    """A one-rule file from GOOD with keys replaced (None removes a key)."""
    merged: dict[str, str | None] = {**GOOD, **keys}
    return "[[rules]]\n" + "".join(f"{k} = {v}\n" for k, v in merged.items() if v is not None)


@pytest.mark.parametrize(
    ("keys", "where", "key", "says"),
    [
        ({"name": None}, "rules[0]", "name", "is required"),
        ({"name": '""'}, "rules[0]", "name", "'' is not a valid name"),
        ({"name": "3"}, "rules[0]", "name", "3 is not a valid name"),
        ({"name": '"has space"'}, "rules[0]", "name", "use 1 to 64 of A-Z a-z 0-9 _ . -"),
        ({"name": '"a\\u001fb"'}, "rules[0]", "name", "is not a valid name"),
        ({"name": '"' + "x" * 65 + '"'}, "rules[0]", "name", "is not a valid name"),
        ({"on": None}, "rule 'r'", "on", "is required; use one of: message, order"),
        ({"on": '"click"'}, "rule 'r'", "on", "'click' is not a trigger"),
        ({"on": "1"}, "rule 'r'", "on", "1 is not a trigger"),
        ({"event": None}, "rule 'r'", "event", "is required"),
        ({"event": '"Lead"'}, "rule 'r'", "event", "did you mean 'LeadSubmitted'"),
        ({"event": "true"}, "rule 'r'", "event", "event_name must be a string"),
        ({"match": '"(unclosed"'}, "rule 'r'", "match", "is not a valid regular expression"),
        ({"match": '""'}, "rule 'r'", "match", "is empty"),
        # Backtracking-only constructs: refused at start rather than run without a time bound.
        ({"match": "'(a)\\1'"}, "rule 'r'", "match", "linear-time engine"),
        ({"match": "'(?=a)b'"}, "rule 'r'", "match", "no backreferences, lookahead"),
        ({"match": "['a']"}, "rule 'r'", "match", "must be a regex string"),
        ({"once": '"yes"'}, "rule 'r'", "once", "must be true or false"),
        ({"once": "1"}, "rule 'r'", "once", "must be true or false"),
        ({"evnet": '"Purchase"'}, "rule 'r'", "evnet", "unknown key; a rule accepts: custom_data"),
        ({"message_types": '"text"'}, "rule 'r'", "message_types", "non-empty list"),
        ({"message_types": "[]"}, "rule 'r'", "message_types", "non-empty list"),
        ({"message_types": '["image"]'}, "rule 'r'", "message_types", "'image' is not a message"),
        (
            {"on": '"order"', "message_types": '["text"]'},
            "rule 'r'",
            "message_types",
            'only applies to on = "message"',
        ),
        ({"custom_data": '"x"'}, "rule 'r'", "custom_data", "must be a table"),
        (
            {"custom_data": "{ value = 5 }"},
            "rule 'r'",
            "custom_data.currency",
            "needs custom_data.currency",
        ),
        (
            {"custom_data": '{ value = "5", currency = "USD" }'},
            "rule 'r'",
            "custom_data.value",
            "JSON number",
        ),
        (
            {"custom_data": '{ value = 5, currency = "dollars" }'},
            "rule 'r'",
            "custom_data.currency",
            "3-letter",
        ),
        (
            {"custom_data": "{ contents = [{ quantity = 1 }] }"},
            "rule 'r'",
            "custom_data.contents[0].id",
            "is required",
        ),
        ({"event": '"Purchase"'}, "rule 'r'", "custom_data", "required for a Purchase"),
        (
            {"event": '"Purchase"', "custom_data": '{ currency = "USD" }'},
            "rule 'r'",
            "custom_data.value",
            "a Purchase needs custom_data.value",
        ),
        (
            {"on": '"automatic_event"', "event": '"Purchase"'},
            "rule 'r'",
            "match",
            "also matches Meta's LeadSubmitted",
        ),
        (
            {"on": '"automatic_event"', "event": '"Purchase"', "match": '"(?i)lead|purchase"'},
            "rule 'r'",
            "match",
            'add match = "^Purchase$"',
        ),
    ],
)
def test_malformed_rule_names_rule_and_key(
    keys: dict[str, str | None], where: str, key: str, says: str
) -> None:
    message = _error(_toml(**keys))
    assert message.startswith(f"config/rules.toml: {where}: key {key!r}: "), message
    assert says in message


def test_rule_without_valid_name_is_named_by_position() -> None:
    text = _toml(name='"first"') + _toml(name='"second"') + _toml(name=None)
    assert _error(text).startswith("config/rules.toml: rules[2]: key 'name': is required")


def test_duplicate_name() -> None:
    message = _error(_toml(name='"dup"') + _toml(name='"other"') + _toml(name='"dup"'))
    assert message.startswith("config/rules.toml: rule 'dup' (rules[2]): key 'name': ")
    assert "names must be unique" in message


# --- what loads -------------------------------------------------------------------------------


def test_purchase_from_a_message_with_value_and_currency_loads() -> None:
    rule = _rule(
        'name = "paid"\non = "message"\nmatch = "(?i)paid"\nevent = "Purchase"\n'
        'custom_data = { value = 49.9, currency = "eur" }\n'
    )
    assert rule.custom_data == {"value": 49.9, "currency": "EUR"}


@pytest.mark.parametrize("on", ["order", "automatic_event"])
def test_purchase_from_an_order_or_meta_needs_no_value_of_its_own(on: str) -> None:
    match = 'match = "^Purchase$"\n' if on == "automatic_event" else ""
    rule = _rule(f'name = "p"\non = "{on}"\nevent = "Purchase"\n{match}')
    assert rule.custom_data is None


def test_automatic_purchase_without_match_loads_when_the_rule_sets_a_value() -> None:
    rule = _rule(
        'name = "p"\non = "automatic_event"\nevent = "Purchase"\n'
        'custom_data = { value = 1, currency = "USD" }\n'
    )
    assert rule.matches("LeadSubmitted")


def test_lead_from_automatic_events_without_match_loads() -> None:
    rule = _rule('name = "leads"\non = "automatic_event"\nevent = "LeadSubmitted"\n')
    assert rule.matches("LeadSubmitted")
    assert rule.matches("Purchase")


def test_message_types_and_once_false() -> None:
    rule = _rule(
        'name = "b"\non = "message"\nevent = "AddToCart"\nonce = false\n'
        'message_types = ["button", "interactive"]\n'
    )
    assert rule.once is False
    assert rule.message_types == frozenset({"button", "interactive"})
    assert rule.message_types <= MESSAGE_TYPES


def test_rules_are_frozen_and_hashable() -> None:
    rule = _rule(
        'name = "x"\non = "message"\nevent = "LeadSubmitted"\n'
        'custom_data = { value = 1, currency = "USD", contents = [{ id = "a" }] }\n'
    )
    with pytest.raises(AttributeError):
        rule.name = "y"  # type: ignore[misc]
    with pytest.raises(TypeError):
        rule.custom_data["value"] = 2  # type: ignore[index]
    assert hash(rule) == hash(rule)


def test_for_trigger_keeps_file_order() -> None:
    text = (
        _toml(name='"m1"')
        + _toml(name='"o1"', on='"order"')
        + _toml(name='"m2"')
        + _toml(name='"a1"', on='"automatic_event"')
    )
    ruleset = parse_rules(text)
    assert [r.name for r in ruleset.for_trigger("message")] == ["m1", "m2"]
    assert [r.name for r in ruleset.for_trigger("order")] == ["o1"]
    assert [r.name for r in ruleset.for_trigger("automatic_event")] == ["a1"]
    assert ruleset.for_trigger("status") == ()


# --- matching ---------------------------------------------------------------------------------


@pytest.fixture
def price_rule() -> Rule:
    return parse_rules(CONTRACT_EXAMPLE).rules[0]


@pytest.mark.parametrize(
    "text", ["What's the PRICE?", "price", "I want to buy two", "Buy", "ok, BUY it"]
)
def test_contract_regex_matches_case_insensitively(price_rule: Rule, text: str) -> None:
    assert price_rule.matches(text)
    assert price_rule.matches(text, "text")


@pytest.mark.parametrize("text", ["", "hello", "priceless", "buyer", "sprice"])
def test_contract_regex_non_match(price_rule: Rule, text: str) -> None:
    assert not price_rule.matches(text)


def test_no_text_never_matches_a_regex(price_rule: Rule) -> None:
    assert not price_rule.matches(None)
    assert not price_rule.matches(None, "text")


def test_no_match_matches_anything() -> None:
    rule = _rule('name = "any"\non = "order"\nevent = "InitiateCheckout"\n')
    assert rule.matches(None)
    assert rule.matches("")
    assert rule.matches("anything", "order")


def test_match_is_searched_not_anchored() -> None:
    rule = _rule('name = "x"\non = "message"\nevent = "AddToCart"\nmatch = "cart"\n')
    assert rule.matches("put it in my cart please")
    assert not rule.matches("put it in my CART please"), "case-sensitive unless (?i)"


def test_message_types_restrict_matching() -> None:
    rule = _rule(
        'name = "b"\non = "message"\nevent = "AddToCart"\nmatch = "(?i)buy"\n'
        'message_types = ["button"]\n'
    )
    assert rule.matches("Buy", "button")
    assert not rule.matches("Buy", "text")
    assert not rule.matches("Buy"), "an unknown type cannot satisfy a restriction"


def test_literal_string_regex_in_toml() -> None:
    rule = _rule("name = 'x'\non = 'message'\nevent = 'AddToCart'\nmatch = '(?i)\\bbuy\\b'\n")
    assert rule.matches("BUY now")
    assert not rule.matches("buyer")


# --- custom_data of a fired event -------------------------------------------------------------


def test_event_custom_data_merges_rule_defaults_under_the_trigger_data() -> None:
    rule = _rule(
        'name = "x"\non = "order"\nevent = "InitiateCheckout"\n'
        'custom_data = { content_type = "product", value = 1, currency = "USD" }\n'
    )
    carried = {"value": 23.97, "currency": "EUR", "contents": [{"id": "a"}], "num_items": 1}
    merged = rule.event_custom_data(carried)
    assert merged == {
        "content_type": "product",
        "value": 23.97,
        "currency": "EUR",
        "contents": [{"id": "a"}],
        "num_items": 1,
    }
    assert merged is not None
    merged["contents"][0]["id"] = "changed"
    assert carried["contents"] == [{"id": "a"}], "a copy"


def test_event_custom_data_from_the_rule_alone_is_a_fresh_copy() -> None:
    rule = _rule(
        'name = "x"\non = "message"\nevent = "LeadSubmitted"\n'
        'custom_data = { value = 10, currency = "usd", contents = [{ id = "a" }] }\n'
    )
    first = rule.event_custom_data()
    assert first == {"value": 10, "currency": "USD", "contents": [{"id": "a"}]}
    assert first is not None
    first["contents"].append({"id": "b"})
    assert rule.event_custom_data() == {"value": 10, "currency": "USD", "contents": [{"id": "a"}]}


def test_event_custom_data_empty() -> None:
    rule = _rule('name = "x"\non = "message"\nevent = "LeadSubmitted"\n')
    assert rule.event_custom_data() is None
    assert rule.event_custom_data({}) is None
    assert rule.event_custom_data({"value": 1}) == {"value": 1}


def test_a_catastrophic_pattern_matches_a_hostile_text_in_linear_time() -> None:
    # Python's backtracking engine takes minutes on this (2^40 ways to split the a's).
    rule = _rule('name = "r"\non = "message"\nmatch = \'^(a+)+$\'\nevent = "LeadSubmitted"\n')
    started = time.perf_counter()
    assert not rule.matches("a" * 40 + "!", "text")
    assert rule.matches("a" * 40, "text")
    assert time.perf_counter() - started < 0.5
