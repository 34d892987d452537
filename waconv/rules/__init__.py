"""The business rules file: what customers do in the chat, turned into conversions.

The file (``WACONV_RULES_FILE``, TOML) is a list of ``[[rules]]``. It is read once at start and
every mistake is fatal there, naming the file, the rule and the key: a rule that silently never
fires (a typo in a key, a regex that does not compile, an event name Meta refuses) costs the
advertiser conversions nobody notices are missing.

Keys of a rule:

``name``           required, unique, ``[A-Za-z0-9_.-]{1,64}``; part of the event_id it fires.
``on``             required: ``message`` (text, button and interactive replies), ``order`` (a
                   catalog order message) or ``automatic_event`` (Meta-detected events).
``match``          optional regex (RE2 syntax: linear-time matching, see ``compile_match``),
                   searched anywhere in the trigger's text: for ``message`` the
                   text body, button text or reply title; for ``order`` the note the customer
                   typed with the order; for ``automatic_event`` Meta's event name
                   (``Purchase`` or ``LeadSubmitted``). Absent: every trigger of that kind.
``event``          required, one of the 14 business-messaging event names.
``once``           optional bool, default true: at most once per conversation and click.
``custom_data``    optional table, defaults for the event's custom_data (e.g. a fixed value and
                   currency for a LeadSubmitted). What the trigger itself carries (an order's
                   computed total, Meta's purchase value) wins over these defaults.
``message_types``  optional list, ``on = "message"`` only: which of ``text``, ``button``,
                   ``interactive`` the rule looks at. Absent: all three.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

import re2

from waconv.conversions.events import InvalidConversion, validate_custom_data, validate_event_name

Trigger = Literal["message", "order", "automatic_event"]
TRIGGERS: tuple[Trigger, ...] = ("message", "order", "automatic_event")
# The message types whose text an `on = "message"` rule can see (CONTRACT: text, button and
# interactive replies); other types carry no text worth matching.
MESSAGE_TYPES = frozenset({"text", "button", "interactive"})
# A rule name goes into event ids and log lines: keep it short and free of separators.
RULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
RULE_KEYS = frozenset({"name", "on", "match", "event", "once", "custom_data", "message_types"})
# An automatic_event rule without a `match` also sees LeadSubmitted, which carries no value.
_AUTOMATIC_LEAD = "LeadSubmitted"


class RulesError(ValueError):
    """The rules file cannot be used; the message names the file, the rule and the key."""


_Fail = Callable[[str, str], RulesError]


@dataclass(frozen=True)
class Rule:
    name: str
    on: Trigger
    match: re2._Regexp | None
    event: str
    once: bool = True
    # Read-only view of normalized defaults; event_custom_data() hands out fresh copies.
    custom_data: Mapping[str, Any] | None = field(default=None, hash=False)
    # None: every type in MESSAGE_TYPES.
    message_types: frozenset[str] | None = None

    def matches(self, text: str | None, message_type: str | None = None) -> bool:
        """Whether this rule fires for a trigger with this text (and message type).

        No ``match``: any text, None included. With ``match``: a search in the text; no
        text never matches. With ``message_types``: the type must be one of them (an unknown
        type, None included, does not match).
        """
        if self.message_types is not None and message_type not in self.message_types:
            return False
        if self.match is None:
            return True
        return text is not None and self.match.search(text) is not None

    def event_custom_data(self, carried: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The custom_data of a fired event: this rule's defaults, then what the trigger carries.

        ``carried`` (an order's computed total, Meta's automatic-event data) wins key by key.
        Returns a new dict (or None when both are empty) that the caller may keep or change;
        validate it with ``validate_custom_data`` before storing it.
        """
        if not self.custom_data and not carried:
            return None
        merged: dict[str, Any] = copy.deepcopy(dict(self.custom_data or {}))
        if carried:
            merged.update(copy.deepcopy(dict(carried)))
        return merged


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    # Precomputed per trigger: the webhook path asks for every message it processes.
    _by_trigger: Mapping[str, tuple[Rule, ...]] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        by_trigger = {on: tuple(r for r in self.rules if r.on == on) for on in TRIGGERS}
        object.__setattr__(self, "_by_trigger", MappingProxyType(by_trigger))

    @classmethod
    def empty(cls) -> RuleSet:
        return cls(())

    def for_trigger(self, on: str) -> tuple[Rule, ...]:
        """The rules with this ``on``, in file order; an unknown trigger has none."""
        return self._by_trigger.get(on, ())

    def __len__(self) -> int:
        return len(self.rules)


def load_rules(path: str | Path) -> RuleSet:
    """Read and check a rules file; a missing or unreadable file is a RulesError naming it."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesError(
            f"{source}: rules file not found (set WACONV_RULES_FILE to an existing file; "
            "an empty file means no rules)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{source}: cannot read the rules file: {exc}") from exc
    return parse_rules(text, source)


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Check rules given as TOML text; ``source`` names the file in error messages."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from exc
    # Any other top-level key is almost surely a misspelt [[rules]] (say [[rule]]), which would
    # otherwise leave the file silently empty.
    unknown = sorted(set(document) - {"rules"})
    if unknown:
        raise RulesError(
            f"{source}: unknown top-level key {unknown[0]!r}; rules are written as [[rules]] tables"
        )
    entries = document.get("rules", [])
    if not isinstance(entries, list):
        raise RulesError(f"{source}: 'rules' must be a list of [[rules]] tables")
    rules: list[Rule] = []
    seen: set[str] = set()
    for position, entry in enumerate(entries):
        rule = _parse_rule(entry, source, position)
        if rule.name in seen:
            raise RulesError(
                f"{source}: rule {rule.name!r} (rules[{position}]): key 'name': "
                "the name is used by an earlier rule; names must be unique"
            )
        seen.add(rule.name)
        rules.append(rule)
    return RuleSet(tuple(rules))


def _parse_rule(entry: object, source: str, position: int) -> Rule:
    where = f"rules[{position}]"
    if not isinstance(entry, dict):
        raise RulesError(f"{source}: {where}: must be a table ([[rules]]), not {entry!r}")

    def fail(key: str, problem: str) -> RulesError:
        return RulesError(f"{source}: {where}: key {key!r}: {problem}")

    name = entry.get("name")
    if name is None:
        raise fail("name", "is required (a unique name such as 'asked-for-price')")
    if not isinstance(name, str) or not RULE_NAME.fullmatch(name):
        raise fail("name", f"{name!r} is not a valid name; use 1 to 64 of A-Z a-z 0-9 _ . -")
    where = f"rule {name!r}"

    unknown = sorted(set(entry) - RULE_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key; a rule accepts: {', '.join(sorted(RULE_KEYS))}")

    on = entry.get("on")
    if on is None:
        raise fail("on", f"is required; use one of: {', '.join(TRIGGERS)}")
    if on not in TRIGGERS:
        raise fail("on", f"{on!r} is not a trigger; use one of: {', '.join(TRIGGERS)}")
    trigger = cast(Trigger, on)

    event = entry.get("event")
    if event is None:
        raise fail("event", "is required (one of the 14 business-messaging event names)")
    try:
        event = validate_event_name(event)
    except InvalidConversion as exc:
        raise fail("event", str(exc)) from None

    match = _parse_match(entry.get("match"), fail)

    once = entry.get("once", True)
    if not isinstance(once, bool):
        raise fail("once", f"must be true or false, not {once!r}")

    message_types = _parse_message_types(entry.get("message_types"), trigger, fail)

    raw_custom_data = entry.get("custom_data")
    if raw_custom_data is not None and not isinstance(raw_custom_data, dict):
        raise fail("custom_data", f"must be a table, not {raw_custom_data!r}")
    try:
        # Only a message carries no amount of its own: a Purchase it fires must take value and
        # currency from the rule. An order computes its total; Meta's Purchase carries one.
        custom_data = validate_custom_data(
            event, raw_custom_data, require_purchase_fields=trigger == "message"
        )
    except InvalidConversion as exc:
        raise fail(exc.field, str(exc)) from None

    rule = Rule(
        name=name,
        on=trigger,
        match=match,
        event=event,
        once=once,
        custom_data=MappingProxyType(custom_data) if custom_data is not None else None,
        message_types=message_types,
    )
    if (
        trigger == "automatic_event"
        and event == "Purchase"
        and not (custom_data and "value" in custom_data)
        and rule.matches(_AUTOMATIC_LEAD)
    ):
        raise fail(
            "match",
            "this Purchase rule also matches Meta's LeadSubmitted automatic events, which carry "
            'no value, so Meta would refuse them; add match = "^Purchase$"',
        )
    return rule


def _parse_match(pattern: object, fail: _Fail) -> re2._Regexp | None:
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise fail("match", f"must be a regex string, not {pattern!r}")
    if not pattern:
        # An empty regex matches everything; leaving `match` out says that on purpose.
        raise fail("match", "is empty; leave 'match' out to match every trigger")
    try:
        return compile_match(pattern)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise fail(
            "match",
            f"{pattern!r} is not a valid regular expression for RE2, the linear-time engine "
            f"rules run on (it has no backreferences, lookahead or lookbehind): {reason}",
        ) from None


def compile_match(pattern: str) -> re2._Regexp:
    """A rule's regex, compiled by RE2: its time is linear in the text, so no customer's
    message (``^(a+)+$`` against "aaaa…a!") can hold the processors. RE2 refuses what it
    cannot run that way (backreferences, lookaround) instead of backtracking."""
    options = re2.Options()
    options.log_errors = False  # the refusal is ours to word, once, naming the rule
    return re2.compile(pattern, options)


def _parse_message_types(value: object, trigger: Trigger, fail: _Fail) -> frozenset[str] | None:
    if value is None:
        return None
    if trigger != "message":
        raise fail("message_types", f'only applies to on = "message", not on = {trigger!r}')
    accepted = ", ".join(sorted(MESSAGE_TYPES))
    if not isinstance(value, list) or not value:
        raise fail("message_types", f"must be a non-empty list of: {accepted}")
    for item in value:
        if item not in MESSAGE_TYPES:
            raise fail("message_types", f"{item!r} is not a message type; use: {accepted}")
    return frozenset(value)
