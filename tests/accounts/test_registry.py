"""The registry's rules: which pauses a dataset cures, which events a fix releases."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from tests.accounts.helpers import TOKEN_A, WABA_A, converse, conversions, enqueue_leads
from waconv.accounts import registry, service
from waconv.accounts.service import AccountError
from waconv.clock import utcnow
from waconv.conversations.store import ensure_account
from waconv.graph.errors import GraphError, operator_message
from waconv.models import Account, Conversion
from waconv.services import Services


def meta_error(code: int | None, subcode: int | None = None, status: int = 400) -> GraphError:
    return GraphError("Meta said no", http_status=status, code=code, subcode=subcode)


@pytest.mark.parametrize(
    ("err", "dataset_problem"),
    [
        (meta_error(100, 33), True),
        (meta_error(100, 2804132), True),
        (meta_error(2500), True),
        (meta_error(803), True),
        (meta_error(190, 463), False),
        (meta_error(200, status=403), False),
        (meta_error(10, status=403), False),
        (meta_error(100, 2804087), False),
        (meta_error(None, status=404), False),
    ],
)
def test_which_pauses_a_new_dataset_cures(err: GraphError, dataset_problem: bool) -> None:
    account = Account(waba_id=WABA_A, status=Account.ACTIVE)
    code = err.code_label if err.code is not None else None
    registry.pause(account, operator_message(err, waba_id=WABA_A), code=code)
    assert registry.paused_for_dataset(account) is dataset_problem
    registry.resume(account, "fixed")
    assert account.pause_code is None


def test_an_active_account_is_not_paused_for_anything() -> None:
    account = Account(waba_id=WABA_A, status=Account.ACTIVE, pause_code="100/33")
    assert registry.paused_for_dataset(account) is False


def test_resuming_an_active_account_changes_nothing() -> None:
    account = Account(waba_id=WABA_A, status=Account.ACTIVE, status_changed_at=None)
    registry.resume(account, "nothing to resume")
    assert account.status_changed_at is None


def test_credentials_never_show_the_token(services: Services) -> None:
    with services.db.transaction() as session:
        account = registry.get_or_create_account(session, WABA_A)
        registry.set_token(session, account, TOKEN_A, services.settings)
        creds = registry.credentials(account, services.settings)
    assert creds.token == TOKEN_A
    assert TOKEN_A not in repr(creds)
    assert TOKEN_A not in str(creds)


def test_registering_is_idempotent_beside_the_webhook(services: Services) -> None:
    with services.db.transaction() as session:
        ensure_account(session, WABA_A)
        first, created = registry.register(session, WABA_A)
        again, created_again = registry.register(session, WABA_A)
    assert first.id == again.id
    assert (created, created_again) == (False, False)


def test_release_only_wakes_held_events(
    services: Services, post_webhook: Callable[..., Any]
) -> None:
    converse(post_webhook, WABA_A)
    held_id, backing_off_id = enqueue_leads(services, WABA_A)
    later = utcnow() + timedelta(minutes=10)
    held_row, backing_off_row = conversions(services, WABA_A)
    with services.db.transaction() as session:
        held = session.get(Conversion, held_row.id)
        backing_off = session.get(Conversion, backing_off_row.id)
        assert held is not None and backing_off is not None
        held.next_attempt_at = backing_off.next_attempt_at = later
        held.last_error = "held: no access token ..."
        backing_off.last_error = "will retry: Meta had a temporary failure"

    with services.db.transaction() as session:
        assert registry.release_held(session, WABA_A) == 1

    by_event = {r.event_id: r for r in conversions(services, WABA_A)}
    assert by_event[held_id].next_attempt_at <= utcnow()
    assert by_event[backing_off_id].next_attempt_at == later


@pytest.mark.parametrize(
    ("token", "complaint"),
    [
        ("", "empty"),
        (" \t", "empty"),
        ("EAAG abc", "one line"),
        ("EAAG\nabc", "one line"),
        ("EAAGé", "one line"),
        ("E" * 5000, "longer than"),
    ],
)
def test_unusable_tokens(token: str, complaint: str) -> None:
    with pytest.raises(AccountError, match=complaint) as info:
        service.clean_token(token)
    if len(token) > 3:
        assert token.strip() not in str(info.value)


def test_a_pasted_token_loses_its_surrounding_whitespace() -> None:
    assert service.clean_token(f"  {TOKEN_A}\r\n") == TOKEN_A
