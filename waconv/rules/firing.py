"""Rules meet messages: decide which conversions a message or an automatic event fires.

Runs inside the webhook's transaction, so the message and the conversions it fires commit
together. Event ids derive from the rule and the click (``once``) or the rule and the message,
so a redelivered or replayed message fires nothing new.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from waconv.clock import utcnow
from waconv.conversations import store
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


def _fire_matching(
    session: Session,
    matched: list[Rule],
    carried: Callable[[], dict[str, Any] | None],
    *,
    waba_id: str,
    conversation: Conversation | None,
    ctwa_clid: str,
    keys: tuple[str, ...],
    event_time: datetime,
    extra: dict[str, Any] | None = None,
) -> list[str]:
    """Enqueue what each matched rule fires; ``carried`` (the order's or Meta's custom_data)
    is computed once, and only when a rule matched. Returns the refusals."""
    if not matched:
        return []
    try:
        data = carried()
    except InvalidConversion as exc:
        return [f"rule {rule.name!r}: {exc}" for rule in matched]
    refusals = []
    for rule in matched:
        refused = _fire(
            session,
            rule,
            waba_id=waba_id,
            conversation=conversation,
            ctwa_clid=ctwa_clid,
            event_id=rule_event_id(rule, ctwa_clid, *keys),
            event_time=event_time,
            custom_data=rule.event_custom_data(data) or None,
            extra=extra,
        )
        if refused:
            refusals.append(refused)
    return refusals


def _order_custom_data(message: dict[str, Any]) -> dict[str, Any]:
    order = message.get("order")
    items = order.get("product_items") if isinstance(order, dict) else None
    return order_custom_data(items if isinstance(items, list) else [])


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
    """Rules with ``on = "message"`` or ``on = "order"``; only for conversations with a click,
    under the click in effect at the message's time."""
    clid = store.click_at(session, conversation, timestamp)
    if clid is None:
        return []
    matched = [r for r in rules.for_trigger(trigger) if r.matches(text, message_type)]
    return _fire_matching(
        session,
        matched,
        (lambda: _order_custom_data(message)) if trigger == "order" else (lambda: None),
        waba_id=conversation.waba_id,
        conversation=conversation,
        ctwa_clid=clid,
        keys=(wamid,),
        event_time=timestamp,
    )


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
    clid = ctwa_clid or (store.click_at(session, conversation, timestamp) if conversation else None)
    if clid is None:
        return []
    matched = [r for r in rules.for_trigger("automatic_event") if r.matches(event_name, None)]
    raw = event.get("custom_data")
    return _fire_matching(
        session,
        matched,
        lambda: automatic_event_custom_data(raw if isinstance(raw, dict) else None),
        waba_id=waba_id,
        conversation=conversation,
        ctwa_clid=clid,
        keys=(wamid, event_name),
        event_time=timestamp,
        # Meta's own example marks forwarded automatic events this way.
        extra={"messaging_outcome_data": {"outcome_type": "automatic_events"}},
    )
