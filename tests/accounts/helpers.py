"""Two WhatsApp Business Accounts with conversations and queued conversions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from tests import payloads
from tests.conftest import PHONE_NUMBER_ID, WABA_ID
from waconv.accounts import registry
from waconv.clock import utcnow
from waconv.conversions.outbox import enqueue
from waconv.models import Account, Conversation, Conversion
from waconv.services import Services

WABA_A = WABA_ID
WABA_B = "209876543210987"
PHONES = {WABA_A: PHONE_NUMBER_ID, WABA_B: "206540352242999"}
# Long and distinctive, so a leak anywhere would be found by a plain substring search.
TOKEN_A = "EAAGwabaAsecretToken0123456789abcdefABCDEFghijklmnopQRSTUV"
TOKEN_B = "EAAGwabaBsecretToken9876543210fedcbaFEDCBAzyxwvutsrqPONMLK"


def converse(post_webhook: Callable[..., Any], waba_id: str, *, users: int = 2) -> None:
    """``users`` people click an ad of ``waba_id`` and write to its number."""
    for n in range(users):
        wa_id = f"1650555{n:04d}"
        msg = payloads.message(wa_id=wa_id, ref=payloads.referral(f"Aff-{waba_id}-click-{n}"))
        change = payloads.change(
            messages=[msg], contacts=[payloads.contact(wa_id)], phone_number_id=PHONES[waba_id]
        )
        response = post_webhook(payloads.envelope(change, waba_id=waba_id))
        assert response.status_code == 200, response.get_json()


def enqueue_leads(services: Services, waba_id: str) -> list[str]:
    """One LeadSubmitted per conversation of the WABA; returns the event ids."""
    event_ids = []
    with services.db.transaction() as session:
        conversations = session.scalars(
            select(Conversation).where(Conversation.waba_id == waba_id).order_by(Conversation.id)
        )
        for conv in conversations:
            assert conv.ctwa_clid
            event_id = f"lead-{waba_id}-{conv.id}"
            enqueue(
                session,
                event_id=event_id,
                waba_id=waba_id,
                ctwa_clid=conv.ctwa_clid,
                event_name="LeadSubmitted",
                event_time=utcnow() - timedelta(minutes=1),
                source="admin",
                conversation_id=conv.id,
            )
            event_ids.append(event_id)
    assert event_ids
    return event_ids


def conversions(services: Services, waba_id: str) -> list[Conversion]:
    with services.db.transaction() as session:
        return list(
            session.scalars(
                select(Conversion).where(Conversion.waba_id == waba_id).order_by(Conversion.id)
            )
        )


def account(services: Services, waba_id: str) -> Account:
    with services.db.transaction() as session:
        found = registry.get_account(session, waba_id)
        assert found is not None
        return found
