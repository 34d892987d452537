"""Webhook payloads in the shapes Meta documents (see shared/reference/meta-api.md §1–2)."""

from __future__ import annotations

import itertools
from typing import Any

from tests.conftest import PHONE_NUMBER_ID, WABA_ID

_counter = itertools.count(1)

CLICK_ID = (
    "Aff-n8ZTODiE79d22KtAwQKj9e_mIEOOj27vDVwFjN80dp4_0NiNhEgpGo0AHemvuSoifXaytfTzcchpti"
    "ErTKCqTrJ5nW1h7IHYeYymGb5K5J5iTROpBhWAGaIAeUzHL50"
)


def wamid() -> str:
    return f"wamid.TEST{next(_counter):012d}"


def referral(ctwa_clid: str | None = CLICK_ID, **fields: Any) -> dict[str, Any]:
    ref: dict[str, Any] = {
        "source_url": "https://fb.me/3cr4Wqqkv",
        "source_id": "120226305854810726",
        "source_type": "ad",
        "body": "Summer Succulents are here!",
        "headline": "Chat with us",
        "media_type": "image",
        "image_url": "https://scontent.xx.fbcdn.net/v/t45.1",
        "welcome_message": {"text": "Hi there! Let us know how we can help!"},
    }
    if ctwa_clid is not None:
        ref["ctwa_clid"] = ctwa_clid
    ref.update(fields)
    return ref


def message(
    kind: str = "text",
    *,
    wa_id: str | None = "16505551234",
    ts: int | str = 1750275992,
    id: str | None = None,
    ref: dict[str, Any] | None = None,
    **body: Any,
) -> dict[str, Any]:
    msg: dict[str, Any] = {"id": id or wamid(), "timestamp": str(ts), "type": kind}
    if wa_id is not None:
        msg["from"] = wa_id
    if ref is not None:
        msg["referral"] = ref
    if kind == "text" and "text" not in body:
        body["text"] = {"body": "Can I get more info about this?"}
    msg.update(body)
    return msg


def text(body: str, **kw: Any) -> dict[str, Any]:
    return message("text", text={"body": body}, **kw)


def button(label: str, **kw: Any) -> dict[str, Any]:
    ctx = {"from": "15550783881", "id": "wamid.CONTEXT"}
    return message("button", button={"payload": label, "text": label}, context=ctx, **kw)


def button_reply(title: str, reply_id: str = "btn-1", **kw: Any) -> dict[str, Any]:
    interactive = {"type": "button_reply", "button_reply": {"id": reply_id, "title": title}}
    return message("interactive", interactive=interactive, **kw)


def list_reply(title: str, **kw: Any) -> dict[str, Any]:
    interactive = {
        "type": "list_reply",
        "list_reply": {"id": "row-1", "title": title, "description": "Next Day to 2 Days"},
    }
    return message("interactive", interactive=interactive, **kw)


def order(items: list[dict[str, Any]], note: str = "Love these!", **kw: Any) -> dict[str, Any]:
    return message(
        "order",
        order={"catalog_id": "194836987003835", "text": note, "product_items": items},
        **kw,
    )


def contact(wa_id: str | None = "16505551234", **fields: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"profile": {"name": "Sheena Nelson"}}
    if wa_id is not None:
        c["wa_id"] = wa_id
    c.update(fields)
    return c


def change(
    *,
    messages: list[dict[str, Any]] | None = None,
    contacts: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    errors: list[dict[str, Any]] | None = None,
    phone_number_id: str = PHONE_NUMBER_ID,
    field: str = "messages",
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
    }
    if messages is not None:
        value["messages"] = messages
        value["contacts"] = contacts if contacts is not None else [contact()]
    if statuses is not None:
        value["statuses"] = statuses
    if errors is not None:
        value["errors"] = errors
    return {"field": field, "value": value}


def automatic_events_change(
    events: list[dict[str, Any]], phone_number_id: str = PHONE_NUMBER_ID
) -> dict[str, Any]:
    return {
        "field": "automatic_events",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
            "automatic_events": events,
        },
    }


def envelope(*changes: dict[str, Any], waba_id: str = WABA_ID) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba_id, "changes": list(changes)}],
    }


def delivery(*messages: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """The common case: one entry, one messages change carrying these messages."""
    return envelope(change(messages=list(messages), **kw))
