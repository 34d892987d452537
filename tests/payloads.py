"""Webhook payloads in the shapes Meta documents (see shared/reference/meta-api.md §1-2)."""

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


# --- Further message types, statuses, errors and automatic events (meta-api.md §1.6, §2) ------

USER_ID = "US.13491208655302741918"  # a business-scoped user id (BSUID, 2026)


def media(kind: str, *, caption: str | None = None, **kw: Any) -> dict[str, Any]:
    """image / audio / video / document / sticker as the Cloud API reference shows them."""
    shapes: dict[str, dict[str, Any]] = {
        "image": {"mime_type": "image/jpeg"},
        "audio": {"mime_type": "audio/ogg; codecs=opus", "voice": True},
        "video": {"mime_type": "video/mp4"},
        "document": {"mime_type": "application/pdf", "filename": "menu.pdf"},
        "sticker": {"mime_type": "image/webp", "animated": False},
    }
    block: dict[str, Any] = {
        **shapes[kind],
        "sha256": "u2Z5Dj4hmvXKzQ0W4Kb3rLHbYI2J1tqvN7kR0dC4Ngs=",
        "id": "1003383421387256",
    }
    if caption is not None:
        block["caption"] = caption
    return message(kind, **{kind: block}, **kw)


def location(**kw: Any) -> dict[str, Any]:
    loc = {
        "latitude": 37.483307,
        "longitude": -122.148981,
        "name": "Philz Coffee",
        "address": "101 Forest Ave, Palo Alto, CA 94301",
        "url": "https://philzcoffee.com",
    }
    return message("location", location=loc, **kw)


def contacts_message(**kw: Any) -> dict[str, Any]:
    card = {
        "name": {"formatted_name": "Barbara J. Johnson", "first_name": "Barbara"},
        "phones": [{"phone": "+1 (650) 555-1234", "wa_id": "16505551234", "type": "WORK"}],
        "emails": [{"email": "bjohnson@example.com", "type": "WORK"}],
        "org": {"company": "Lucky Shrub"},
    }
    return message("contacts", contacts=[card], **kw)


def reaction(message_id: str = "wamid.REACTED", emoji: str = "\U0001f44d", **kw: Any) -> dict:
    return message("reaction", reaction={"message_id": message_id, "emoji": emoji}, **kw)


def unsupported(code: int = 131051, **kw: Any) -> dict[str, Any]:
    error = {
        "code": code,
        "title": "Message type unknown",
        "message": "Message type unknown",
        "error_data": {"details": "Message type is currently not supported."},
    }
    return message("unsupported", errors=[error], unsupported={"type": "edit"}, **kw)


def changed_number(old: str, new: str, **kw: Any) -> dict[str, Any]:
    system = {
        "body": f"Sheena Nelson changed from {old} to {new}",
        "new_wa_id": new,
        "type": "user_changed_number",
    }
    return message("system", wa_id=old, system=system, **kw)


def request_welcome(**kw: Any) -> dict[str, Any]:
    return message("request_welcome", **kw)


def status(
    wamid_: str,
    state: str,
    *,
    ts: int | str = 1750276000,
    recipient_id: str = "16505551234",
    pricing: bool = False,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    st: dict[str, Any] = {
        "id": wamid_,
        "status": state,
        "timestamp": str(ts),
        "recipient_id": recipient_id,
    }
    if pricing:
        st["pricing"] = {
            "billable": False,
            "pricing_model": "PMP",
            "type": "free_entry_point",
            "category": "referral_conversion",
        }
    if errors is not None:
        st["errors"] = errors
    return st


def error(code: int = 130429, title: str = "Rate limit hit") -> dict[str, Any]:
    return {
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": "Cloud API message throughput has been reached."},
        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
    }


def automatic_event(
    event_name: str = "Purchase",
    *,
    id: str | None = None,
    ts: int = 1739321024,
    ctwa_clid: str | None = CLICK_ID,
    custom_data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {"id": id or wamid(), "event_name": event_name, "timestamp": ts}
    if ctwa_clid is not None:
        event["ctwa_clid"] = ctwa_clid
    if custom_data is not None:
        event["custom_data"] = custom_data
    return event


def account_update_change() -> dict[str, Any]:
    return {
        "field": "account_update",
        "value": {"phone_number": "15550783881", "event": "VERIFIED_ACCOUNT"},
    }
