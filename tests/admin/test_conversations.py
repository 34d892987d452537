"""GET /admin/conversations/<user>: who clicked which ad, when."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests import payloads as p
from tests.admin.conftest import Admin
from tests.conftest import PHONE_NUMBER_ID, WABA_ID


def test_conversation_with_its_click(admin: Admin, clicked: str) -> None:
    r = admin.get(f"/admin/conversations/{clicked}")
    assert r.status_code == 200
    body = r.json
    assert body["wa_id"] == clicked
    assert body["user_id"] is None
    assert body["waba_id"] == WABA_ID
    assert body["phone_number_id"] == PHONE_NUMBER_ID
    assert body["ctwa_clid"] == p.CLICK_ID
    assert body["referral"]["source_id"] == "120226305854810726"
    assert body["referral"]["headline"] == "Chat with us"
    assert body["clicked_at"] == "2025-06-18T19:46:32Z"
    assert body["first_message_at"] == body["last_message_at"] == "2025-06-18T19:46:32Z"
    assert [c["ctwa_clid"] for c in body["clicks"]] == [p.CLICK_ID]


def test_by_user_id_and_phone_number(admin: Admin, post_webhook: Callable[..., Any]) -> None:
    msg = p.message(wa_id=None, from_user_id=p.USER_ID, ref=p.referral())
    contacts = [p.contact(None, user_id=p.USER_ID)]
    assert post_webhook(p.delivery(msg, contacts=contacts)).status_code == 200
    r = admin.get(f"/admin/conversations/{p.USER_ID}", phone_number_id=PHONE_NUMBER_ID)
    assert r.status_code == 200
    assert (r.json["user_id"], r.json["wa_id"]) == (p.USER_ID, None)
    other = admin.get(f"/admin/conversations/{p.USER_ID}", phone_number_id="1")
    assert other.status_code == 404


def test_unknown_user_is_404(admin: Admin, clicked: str) -> None:
    r = admin.get("/admin/conversations/19995550000")
    assert r.status_code == 404
    assert r.json["error"]["code"] == "conversation_not_found"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/admin/conversations/1650%005551234", "user"),
        ("/admin/conversations/16505551234?phone_number_id=1%002", "phone_number_id"),
        ("/admin/conversations/" + "1" * 300, "user"),
    ],
    ids=["nul-user", "nul-phone-number", "long-user"],
)
def test_identifiers_no_database_can_hold_are_400(
    admin: Admin, clicked: str, path: str, field: str
) -> None:
    r = admin.client.get(path, headers=admin.headers)
    assert r.status_code == 400
    assert r.json["error"]["field"] == field
