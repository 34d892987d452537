"""Rules meet messages: decide which conversions a message or an automatic event fires.

Runs inside the webhook's transaction, so the message and the conversions it fires commit
together. Event ids derive from the rule and the click (``once``) or the rule and the message,
so a redelivered or replayed message fires nothing new.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from waconv.clock import utcnow
from waconv.conversions.events import (
    InvalidConversion,
    automatic_event_custom_data,
    event_id_for,
    order_custom_data,
)
from waconv.conversions.outbox import enqueue
from waconv.models import Conversation
from waconv.rules import Rule, RuleSet

log = logging.getLogger(__name__)


def rule_event_id(rule: Rule, ctwa_clid: str, *message_keys: str) -> str:
    """The rule's name stays readable in the id; the rest is a digest."""
    if rule.once:
        return f"{rule.name}.{event_id_for('rule', rule.name, ctwa_clid)[:24]}"
    return f"{rule.name}.{event_id_for('rule', rule.name, *message_keys)[:24]}"


def _fire(
    session: Session,
    rule: Rule,
    *,
    waba_id: str,
    conversation: Conversation | None,
    ctwa_clid: str,
    event_id: str,
    event_time: datetime,
    custom_data: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> str | None:
    """Enqueue what the rule fires; return why it was refused, or None."""
    # Meta's clock decides when the message was sent; if ours runs behind, the event must not
    # be refused as "in the future".
    event_time = min(event_time, utcnow())
    try:
        enqueue(
            session,
            event_id=event_id,
            waba_id=waba_id,
            ctwa_clid=ctwa_clid,
            event_name=rule.event,
            event_time=event_time,
            source="rule",
            custom_data=custom_data,
            conversation_id=conversation.id if conversation else None,
            rule_name=rule.name,
            extra=extra,
            expire_if_stale=True,
        )
    except InvalidConversion as exc:
        log.warning("rule.refused rule=%s reason=%s", rule.name, exc)
        return f"rule {rule.name!r}: {exc}"
    return None


def fire_message_rules(
    session: Session,
    rules: RuleSet,
    conversation: Conversation,
    trigger: str,
    wamid: str,
    message_type: str,
    text: str | None,
    timestamp: datetime,
    message: dict[str, Any],
) -> list[str]:
    """Rules with ``on = "message"`` or ``on = "order"``; only for conversations with a click."""
    candidates = rules.for_trigger(trigger)
    clid = conversation.ctwa_clid
    if not candidates or clid is None:
        return []
    refusals = []
    for rule in candidates:
        if not rule.matches(text, message_type):
            continue
        carried = None
        if trigger == "order":
            order = message.get("order") if isinstance(message.get("order"), dict) else {}
            items = order.get("product_items") if isinstance(order, dict) else None
            try:
                carried = order_custom_data(items if isinstance(items, list) else [])
            except InvalidConversion as exc:
                refusals.append(f"rule {rule.name!r}: {exc}")
                continue
        custom = rule.event_custom_data(carried)
        refused = _fire(
            session,
            rule,
            waba_id=conversation.waba_id,
            conversation=conversation,
            ctwa_clid=clid,
            event_id=rule_event_id(rule, clid, wamid),
            event_time=timestamp,
            custom_data=custom or None,
        )
        if refused:
            refusals.append(refused)
    return refusals


def fire_automatic_event(
    session: Session,
    rules: RuleSet,
    waba_id: str,
    conversation: Conversation | None,
    wamid: str,
    event_name: str,
    ctwa_clid: str | None,
    timestamp: datetime,
    event: dict[str, Any],
) -> list[str]:
    """Meta-detected purchases and leads, forwarded only when a rule asks for them."""
    candidates = rules.for_trigger("automatic_event")
    clid = ctwa_clid or (conversation.ctwa_clid if conversation else None)
    if not candidates or clid is None:
        return []
    refusals = []
    for rule in candidates:
        if not rule.matches(event_name, None):
            continue
        raw_custom = event.get("custom_data")
        try:
            custom = automatic_event_custom_data(
                raw_custom if isinstance(raw_custom, dict) else None
            )
        except InvalidConversion as exc:
            refusals.append(f"rule {rule.name!r}: {exc}")
            continue
        merged = rule.event_custom_data(custom)
        refused = _fire(
            session,
            rule,
            waba_id=waba_id,
            conversation=conversation,
            ctwa_clid=clid,
            event_id=rule_event_id(rule, clid, wamid, event_name),
            event_time=timestamp,
            custom_data=merged or None,
            # Meta's own example marks forwarded automatic events this way.
            extra={"messaging_outcome_data": {"outcome_type": "automatic_events"}},
        )
        if refused:
            refusals.append(refused)
    return refusals
