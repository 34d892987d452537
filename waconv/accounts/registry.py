"""The account registry: which token and dataset serve a WABA, and its health.

Everything here works inside the caller's transaction and only flushes; the operations that
call Meta and own their transactions live in :mod:`waconv.accounts.service`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from waconv.accounts.crypto import TokenCipher
from waconv.clock import utcnow
from waconv.config import ConfigError, Settings, event_names
from waconv.conversions.destinations import Routing
from waconv.conversions.held import is_held
from waconv.db import insert_or_ignore
from waconv.models import Account, Conversion

log = logging.getLogger(__name__)

# A paused account is tried again this often, so a token fixed in the environment resumes it.
PAUSED_PROBE_INTERVAL = timedelta(minutes=5)

# Where an account's Graph token comes from, as `waconv accounts list` shows it (never the value).
FROM_ACCOUNT = "own"
FROM_ENV = "default"  # WACONV_ACCESS_TOKEN
FROM_NOWHERE = "none"

# Meta errors that mean "wrong dataset for this WABA" (reference §3.9): 100/33 the token cannot
# reach the dataset, 100/2804132 the dataset is not linked to the WABA; 2500 / 803 an unknown
# path or object, i.e. a dataset id Meta does not know. A new dataset id may cure each of them.
DATASET_ERRORS = frozenset({(100, 33), (100, 2804132)})
DATASET_ERROR_CODES = frozenset({2500, 803})


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
    routing: Routing = field(default_factory=Routing)
    gateway_url: str | None = None
    gateway_key: str | None = None

    def __repr__(self) -> str:
        return (
            f"Credentials(waba_id={self.waba_id!r}, token={'set' if self.token else 'unset'}, "
            f"dataset_id={self.dataset_id!r})"
        )


def get_account(session: Session, waba_id: str) -> Account | None:
    return session.scalar(select(Account).where(Account.waba_id == waba_id))


def get_or_create_account(session: Session, waba_id: str) -> Account:
    return register(session, waba_id)[0]


def register(session: Session, waba_id: str) -> tuple[Account, bool]:
    """The account of ``waba_id`` and whether this call registered it.

    INSERT ... ON CONFLICT DO NOTHING, as the webhook's registration does, so a webhook
    registering the same WABA at the same moment cannot make this fail.
    """
    new_id = insert_or_ignore(session, Account, {"waba_id": waba_id, "status": Account.ACTIVE})
    account = get_account(session, waba_id)
    assert account is not None
    if new_id is not None:
        log.info("account.registered waba_id=%s", waba_id)
    return account, new_id is not None


def list_accounts(session: Session) -> list[Account]:
    return list(session.scalars(select(Account).order_by(Account.waba_id)))


def token_source(account: Account, settings: Settings) -> str:
    """own / default / none: which token sending for this account uses."""
    if account.access_token_encrypted:
        return FROM_ACCOUNT
    return FROM_ENV if settings.access_token else FROM_NOWHERE


def token_readable(account: Account, settings: Settings) -> bool | None:
    """Whether the account's own token opens with this WACONV_SECRET_KEY (None: no own token,
    or no key to try)."""
    if not account.access_token_encrypted or not settings.secret_key:
        return None
    try:
        TokenCipher(settings.secret_key).decrypt(account.access_token_encrypted)
    except ConfigError:
        return False
    return True


def token_for(account: Account, settings: Settings) -> str | None:
    """The account's own token, else WACONV_ACCESS_TOKEN, else None.

    Raises ConfigError (naming WACONV_SECRET_KEY) when the own token cannot be decrypted.
    """
    if account.access_token_encrypted:
        return TokenCipher(settings.secret_key).decrypt(account.access_token_encrypted)
    return settings.access_token or None


def dataset_for(account: Account, settings: Settings) -> str | None:
    """The stored dataset, else WACONV_DATASET_ID for the default WABA (WACONV_WABA_ID)."""
    if account.dataset_id:
        return account.dataset_id
    if settings.dataset_id and account.waba_id == settings.waba_id:
        return settings.dataset_id
    return None


def routing_for(account: Account, settings: Settings) -> Routing:
    """The account's destination and Gateway event filter, else the WACONV_* defaults."""
    events = account.gateway_events if account.gateway_events is not None else None
    return Routing(
        destination=account.destination or settings.destination,
        gateway_events=event_names(
            events if events is not None else settings.gateway_events, "the Gateway events"
        ),
    )


def gateway_key_for(account: Account, settings: Settings) -> str | None:
    """The account's own Gateway key, else WACONV_GATEWAY_ACCESS_KEY. Raises ConfigError when
    the stored key cannot be decrypted."""
    if account.gateway_key_encrypted:
        return TokenCipher(settings.secret_key).decrypt(account.gateway_key_encrypted)
    return settings.gateway_access_key or None


@dataclass(frozen=True)
class Ldu:
    """An account's Limited Data Use setting, its own or the WACONV_LDU* default."""

    ldu: bool
    country: int
    state: int


def ldu_of(account: Account | None, settings: Settings) -> Ldu:
    if account is None:
        return Ldu(settings.ldu, settings.ldu_country, settings.ldu_state)
    return Ldu(
        ldu=settings.ldu if account.ldu is None else account.ldu,
        country=account.ldu_country if account.ldu_country is not None else settings.ldu_country,
        state=account.ldu_state if account.ldu_state is not None else settings.ldu_state,
    )


def credentials(account: Account, settings: Settings) -> Credentials:
    """What the dispatcher sends with. Raises ConfigError when the account's own token cannot
    be decrypted (the dispatcher then holds that account's events, with the reason)."""
    ldu = ldu_of(account, settings)
    routing = routing_for(account, settings)
    return Credentials(
        waba_id=account.waba_id,
        token=token_for(account, settings),
        dataset_id=dataset_for(account, settings),
        partner_agent=account.partner_agent or settings.partner_agent or None,
        ldu=ldu.ldu,
        ldu_country=ldu.country,
        ldu_state=ldu.state,
        routing=routing,
        gateway_url=(account.gateway_url or settings.gateway_url or None)
        if routing.uses_gateway
        else None,
        gateway_key=gateway_key_for(account, settings) if routing.uses_gateway else None,
    )


def set_token(session: Session, account: Account, token: str, settings: Settings) -> None:
    """Store ``token`` encrypted (WACONV_SECRET_KEY required) and resume the account; then
    :func:`release_held` lets its held events go out on the next dispatcher pass."""
    account.access_token_encrypted = TokenCipher(settings.secret_key).encrypt(token)
    # A dataset the old token could not create may be creatable with this one.
    account.dataset_provision_tried_at = None
    resume(account, "access token replaced")
    session.flush()


def set_dataset(session: Session, account: Account, dataset_id: str, why: str) -> bool:
    """Store the account's dataset; resume it when it was paused for a dataset problem.

    Returns True when the account was resumed. Call :func:`release_held` after it.
    """
    account.dataset_id = dataset_id
    resumed = False
    if account.status == Account.PAUSED and paused_for_dataset(account):
        resume(account, why)
        resumed = True
    session.flush()
    return resumed


def paused_for_dataset(account: Account) -> bool:
    """Whether the account is paused because Meta refused its dataset (not its token)."""
    if account.status != Account.PAUSED or not account.pause_code:
        return False
    code_text, _, subcode_text = account.pause_code.partition("/")
    code = int(code_text)
    subcode = int(subcode_text) if subcode_text else None
    return (code, subcode) in DATASET_ERRORS or code in DATASET_ERROR_CODES


def release_held(session: Session, waba_id: str) -> int:
    """Make the account's held events due now (the reason they waited for is fixed)."""
    now = utcnow()
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        update(Conversion)
        .where(
            Conversion.waba_id == waba_id,
            Conversion.status == Conversion.PENDING,
            is_held(),
            Conversion.next_attempt_at > now,
        )
        .values(next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def pause(
    account: Account, reason: str, now: datetime | None = None, *, code: str | None = None
) -> bool:
    """Stop sending for the account; True when it was active (the operator is told once).

    ``code``: Meta's ``code`` or ``code/subcode`` behind it, if Meta gave one.
    """
    now = now or utcnow()
    was_active = account.status != Account.PAUSED
    account.status = Account.PAUSED
    account.status_reason = reason
    account.pause_code = code
    account.probe_at = now + PAUSED_PROBE_INTERVAL
    if was_active:
        account.status_changed_at = now
        log.error("account.paused waba_id=%s reason=%s", account.waba_id, reason)
    return was_active


def probe_paused_now(session: Session, now: datetime | None = None) -> int:
    """Make every paused account due for its probe now; how many. A dispatcher calls it as it
    starts: its environment may carry what was fixed (a new WACONV_ACCESS_TOKEN, a dataset),
    and the operator who restarted it should not wait for the periodic probe."""
    now = now or utcnow()
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        update(Account)
        .where(Account.status == Account.PAUSED, Account.probe_at > now)
        .values(probe_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


def resume(account: Account, why: str) -> None:
    if account.status != Account.PAUSED:
        return
    log.warning("account.resumed waba_id=%s why=%s", account.waba_id, why)
    account.status = Account.ACTIVE
    account.status_reason = None
    account.pause_code = None
    account.status_changed_at = utcnow()
    account.probe_at = None
