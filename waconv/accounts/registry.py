"""The account registry: which token and dataset serve a WABA, and its health."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from waconv.accounts.crypto import TokenCipher
from waconv.clock import utcnow
from waconv.config import Settings
from waconv.models import Account

log = logging.getLogger(__name__)

# A paused account is tried again this often, so a token fixed in the environment resumes it.
PAUSED_PROBE_INTERVAL = timedelta(minutes=5)


@dataclass(frozen=True)
class Credentials:
    """What sending for one account needs. ``repr`` never shows the token."""

    waba_id: str
    token: str | None
    dataset_id: str | None
    partner_agent: str | None
    ldu: bool
    ldu_country: int
    ldu_state: int

    def __repr__(self) -> str:
        return (
            f"Credentials(waba_id={self.waba_id!r}, token={'set' if self.token else 'unset'}, "
            f"dataset_id={self.dataset_id!r})"
        )


def get_account(session: Session, waba_id: str) -> Account | None:
    return session.scalar(select(Account).where(Account.waba_id == waba_id))


def get_or_create_account(session: Session, waba_id: str) -> Account:
    account = get_account(session, waba_id)
    if account is None:
        account = Account(waba_id=waba_id, status=Account.ACTIVE)
        session.add(account)
        session.flush()
    return account


def token_for(account: Account, settings: Settings) -> str | None:
    if account.access_token_encrypted:
        return TokenCipher(settings.secret_key).decrypt(account.access_token_encrypted)
    return settings.access_token or None


def credentials(account: Account, settings: Settings) -> Credentials:
    dataset_id = account.dataset_id
    if dataset_id is None and settings.dataset_id and account.waba_id == settings.waba_id:
        dataset_id = settings.dataset_id
    return Credentials(
        waba_id=account.waba_id,
        token=token_for(account, settings),
        dataset_id=dataset_id,
        partner_agent=account.partner_agent or settings.partner_agent or None,
        ldu=settings.ldu if account.ldu is None else account.ldu,
        ldu_country=(
            account.ldu_country if account.ldu_country is not None else settings.ldu_country
        ),
        ldu_state=account.ldu_state if account.ldu_state is not None else settings.ldu_state,
    )


def set_token(session: Session, account: Account, token: str, settings: Settings) -> None:
    account.access_token_encrypted = TokenCipher(settings.secret_key).encrypt(token)
    resume(account, "access token replaced")


def pause(account: Account, reason: str, now: datetime | None = None) -> bool:
    """Stop sending for the account; True when it was active (the operator is told once)."""
    now = now or utcnow()
    was_active = account.status != Account.PAUSED
    account.status = Account.PAUSED
    account.status_reason = reason
    account.probe_at = now + PAUSED_PROBE_INTERVAL
    if was_active:
        account.status_changed_at = now
        log.error("account.paused waba_id=%s reason=%s", account.waba_id, reason)
    return was_active


def resume(account: Account, why: str) -> None:
    if account.status == Account.PAUSED:
        log.warning("account.resumed waba_id=%s why=%s", account.waba_id, why)
    account.status = Account.ACTIVE
    account.status_reason = None
    account.status_changed_at = utcnow()
    account.probe_at = None
