"""Account operations the CLI runs: provision a dataset, subscribe the app, store a token.

Each operation is one unit of work that may call Meta, so it owns its short transactions the
way a dispatcher step does: read what the call needs, call Meta with no transaction open, then
record the outcome. Every failure leaves as :class:`AccountError`, one line an operator can act
on that never contains a token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from waconv.accounts import registry
from waconv.accounts.crypto import TokenCipher
from waconv.clock import isoformat, utcnow
from waconv.config import DESTINATIONS, ConfigError, event_names
from waconv.graph.client import GraphClient
from waconv.graph.errors import GraphError, operator_message
from waconv.models import META_ID, Account
from waconv.services import Services

log = logging.getLogger(__name__)

# Meta tokens are a few hundred characters; anything much longer was pasted by mistake.
MAX_TOKEN_LENGTH = 4096
# Meta's dataset_name is a free string; a short one keeps Events Manager readable.
MAX_DATASET_NAME_LENGTH = 255


class AccountError(Exception):
    """An account operation failed; the message is one line for the operator."""


@dataclass(frozen=True)
class Provisioned:
    waba_id: str
    dataset_id: str
    previous_dataset_id: str | None
    registered: bool  # the account was new
    resumed: bool  # the account was paused for a dataset problem and is active again
    released: int  # held events that are due again


@dataclass(frozen=True)
class Subscribed:
    waba_id: str
    registered: bool


@dataclass(frozen=True)
class TokenStored:
    waba_id: str
    registered: bool
    resumed: bool
    released: int


@dataclass(frozen=True)
class AccountView:
    """An account as operators see it: never the token, only where it comes from."""

    waba_id: str
    dataset_id: str | None
    dataset_source: str | None  # account | env (WACONV_DATASET_ID) | None
    token: str  # own | default | none
    token_readable: bool | None  # False: WACONV_SECRET_KEY cannot open the own token
    status: str
    reason: str | None
    since: datetime
    partner_agent: str | None
    ldu: bool | None
    ldu_country: int | None
    ldu_state: int | None
    destination: str = "graph"
    gateway_url: str | None = None
    gateway_key: bool = False  # whether one is set (own or WACONV_GATEWAY_ACCESS_KEY)
    gateway_events: list[str] | None = None
    throttled_until: datetime | None = None  # Meta's rate limit holds the account until then
    throttle_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "waba_id": self.waba_id,
            "dataset_id": self.dataset_id,
            "dataset_source": self.dataset_source,
            "token": self.token,
            "token_readable": self.token_readable,
            "status": self.status,
            "reason": self.reason,
            "since": isoformat(self.since),
            "partner_agent": self.partner_agent,
            "ldu": self.ldu,
            "ldu_country": self.ldu_country,
            "ldu_state": self.ldu_state,
            "destination": self.destination,
            "gateway_url": self.gateway_url,
            "gateway_key": "set" if self.gateway_key else "unset",
            "gateway_events": self.gateway_events,
            "throttled_until": isoformat(self.throttled_until),
            "throttle_reason": self.throttle_reason,
        }


# -- validation ----------------------------------------------------------------------------------


def meta_id(value: str, what: str) -> str:
    """A Meta object id: digits only (it becomes a URL path segment and a column value)."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > META_ID:
        raise AccountError(f"{what} must be a numeric Meta id, not {value!r}")
    return text


def resolve_waba_id(services: Services, waba_id: str | None) -> str:
    """``--waba-id``, else WACONV_WABA_ID, else an error saying to give one."""
    if waba_id:
        return meta_id(waba_id, "the WhatsApp Business Account id")
    if services.settings.waba_id:
        return services.settings.waba_id
    raise AccountError("no WhatsApp Business Account given: pass --waba-id or set WACONV_WABA_ID")


def clean_token(token: str, *, what: str = "the access token") -> str:
    """The token as pasted, without its surrounding whitespace; refused when it cannot be one.

    The messages never repeat the value.
    """
    text = token.strip()
    if not text:
        raise AccountError(f"{what} is empty")
    if len(text) > MAX_TOKEN_LENGTH:
        raise AccountError(f"{what} is longer than {MAX_TOKEN_LENGTH} characters")
    if not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        raise AccountError(
            f"{what} contains spaces or non-printable characters; paste it as one line"
        )
    return text


# -- operations ----------------------------------------------------------------------------------


def _call_token(services: Services, waba_id: str) -> str:
    """The token a Graph call for ``waba_id`` uses: its own, else WACONV_ACCESS_TOKEN."""
    with services.db.transaction() as session:
        account = registry.get_account(session, waba_id)
        try:
            token = (
                registry.token_for(account, services.settings)
                if account is not None
                else services.settings.access_token or None
            )
        except ConfigError as exc:  # the stored token does not open with this key
            raise AccountError(str(exc)) from None
    if not token:
        raise AccountError(
            f"no access token for WhatsApp Business Account {waba_id}: set WACONV_ACCESS_TOKEN "
            f"or run `waconv accounts set-token --waba-id {waba_id}`"
        )
    return token


def provision_dataset(
    services: Services,
    waba_id: str,
    *,
    name: str | None = None,
    graph: GraphClient | None = None,
    retried: bool = False,
) -> Provisioned:
    """Get-or-create the WABA's dataset at Meta (``POST /{waba_id}/dataset``) and store it.
    ``retried``: the caller tries again by itself (the dispatcher), as the error then says."""
    if name is not None and (not name.strip() or len(name) > MAX_DATASET_NAME_LENGTH):
        raise AccountError(f"the dataset name must be 1 to {MAX_DATASET_NAME_LENGTH} characters")
    token = _call_token(services, waba_id)
    client = graph or services.graph
    try:
        dataset_id = client.create_dataset(waba_id, token, name.strip() if name else None)
    except GraphError as err:
        # Not logged: the caller shows it (the CLI's one line on stderr).
        raise AccountError(
            operator_message(
                err, waba_id=waba_id, action="get or create the dataset", retried=retried
            )
        ) from None
    with services.db.transaction() as session:
        account, registered = registry.register(session, waba_id)
        previous = account.dataset_id
        resumed = registry.set_dataset(
            session, account, dataset_id, "dataset provisioned with `waconv provision-dataset`"
        )
        released = registry.release_held(session, waba_id)
    log.info(
        "account.dataset_provisioned waba_id=%s dataset_id=%s previous=%s",
        waba_id,
        dataset_id,
        previous,
    )
    return Provisioned(waba_id, dataset_id, previous, registered, resumed, released)


def subscribe_app(
    services: Services, waba_id: str, *, graph: GraphClient | None = None
) -> Subscribed:
    """``POST /{waba_id}/subscribed_apps``: the WABA's webhooks reach the token's app."""
    token = _call_token(services, waba_id)
    client = graph or services.graph
    try:
        client.subscribe_app(waba_id, token)
    except GraphError as err:
        raise AccountError(
            operator_message(
                err, waba_id=waba_id, action="subscribe the app to the webhooks", retried=False
            )
        ) from None
    with services.db.transaction() as session:
        _, registered = registry.register(session, waba_id)
    log.info("account.app_subscribed waba_id=%s", waba_id)
    return Subscribed(waba_id, registered)


def set_token(services: Services, waba_id: str, token: str) -> TokenStored:
    """Store the account's own token, encrypted with WACONV_SECRET_KEY; resume the account."""
    token = clean_token(token)
    if not services.settings.secret_key:
        raise AccountError(
            "WACONV_SECRET_KEY must be set to store access tokens (it encrypts them in the "
            "database); use the same value wherever waconv runs"
        )
    with services.db.transaction() as session:
        account, registered = registry.register(session, waba_id)
        was_paused = account.status == Account.PAUSED
        registry.set_token(session, account, token, services.settings)
        released = registry.release_held(session, waba_id)
    log.info("account.token_set waba_id=%s", waba_id)
    return TokenStored(waba_id, registered, was_paused, released)


def update_account(
    services: Services,
    waba_id: str,
    *,
    dataset_id: str | None = None,
    partner_agent: str | None = None,
    ldu: bool | None = None,
    ldu_country: int | None = None,
    ldu_state: int | None = None,
    destination: str | None = None,
    gateway_url: str | None = None,
    gateway_key: str | None = None,
    gateway_events: str | None = None,
) -> AccountView:
    """Change the given settings of one account (None: leave as is; partner_agent "" and
    gateway_events "" clear)."""
    if dataset_id is not None:
        dataset_id = meta_id(dataset_id, "the dataset id")
    if destination is not None and destination not in DESTINATIONS:
        raise AccountError(f"the destination must be graph, gateway or both, not {destination!r}")
    if gateway_url is not None:
        gateway_url = gateway_url.strip()
        if not gateway_url.startswith(("http://", "https://")):
            raise AccountError("the Gateway URL must start with http:// or https://")
    encrypted_key = None
    if gateway_key is not None:
        key = clean_token(gateway_key, what="the Gateway access key")
        if not services.settings.secret_key:
            raise AccountError(
                "WACONV_SECRET_KEY must be set to store a Gateway access key (it encrypts it "
                "in the database)"
            )
        encrypted_key = TokenCipher(services.settings.secret_key).encrypt(key)
    events = None
    if gateway_events is not None:
        try:
            names = event_names(gateway_events, "--gateway-events")
        except ConfigError as exc:
            raise AccountError(str(exc)) from None
        events = ",".join(sorted(names)) if names else ""
    with services.db.transaction() as session:
        account, _ = registry.register(session, waba_id)
        if destination is not None:
            account.destination = destination
        if gateway_url is not None:
            account.gateway_url = gateway_url
        if encrypted_key is not None:
            account.gateway_key_encrypted = encrypted_key
        if events is not None:
            account.gateway_events = events or None
        if partner_agent is not None:
            account.partner_agent = partner_agent.strip() or None
        if ldu is not None:
            account.ldu = ldu
        if ldu_country is not None:
            account.ldu_country = ldu_country
        if ldu_state is not None:
            account.ldu_state = ldu_state
        if dataset_id is not None:
            registry.set_dataset(session, account, dataset_id, "dataset set by the operator")
            registry.release_held(session, waba_id)
        session.flush()
        view = _view(account, services)
    log.info("account.updated waba_id=%s", waba_id)
    return view


def list_accounts(services: Services) -> list[AccountView]:
    with services.db.transaction() as session:
        return [_view(account, services) for account in registry.list_accounts(session)]


def _view(account: Account, services: Services) -> AccountView:
    settings = services.settings
    dataset_id = registry.dataset_for(account, settings)
    routing = registry.routing_for(account, settings)
    throttled = account.throttled_until
    if throttled is not None and throttled <= utcnow():
        throttled = None  # a past rate limit: nothing holds the account
    source = None
    if dataset_id:
        source = "account" if account.dataset_id else "env"
    return AccountView(
        waba_id=account.waba_id,
        dataset_id=dataset_id,
        dataset_source=source,
        token=registry.token_source(account, settings),
        token_readable=registry.token_readable(account, settings),
        status=account.status,
        reason=account.status_reason,
        since=account.status_changed_at or account.created_at,
        partner_agent=account.partner_agent,
        ldu=account.ldu,
        ldu_country=account.ldu_country,
        ldu_state=account.ldu_state,
        destination=routing.destination,
        gateway_url=account.gateway_url or settings.gateway_url or None,
        gateway_key=bool(account.gateway_key_encrypted or settings.gateway_access_key),
        gateway_events=sorted(routing.gateway_events) if routing.gateway_events else None,
        throttled_until=throttled,
        throttle_reason=account.throttle_reason if throttled else None,
    )


def why_idle(services: Services) -> list[str]:
    """Why each account with events waiting sent none of them now, one line each: held (the
    reason, with the command that fixes it), paused until its next probe, throttled by Meta's
    rate limit until a time, backing off until its next retry, or leased by another
    dispatcher. For ``waconv dispatch --once``."""
    from sqlalchemy import func, select

    from waconv.conversions.held import held_reason, is_held
    from waconv.models import Conversion

    now = utcnow()
    lines = []
    with services.db.transaction() as session:
        waiting = session.execute(
            select(Conversion.waba_id, func.count(), func.min(Conversion.next_attempt_at))
            .where(Conversion.status == Conversion.PENDING)
            .group_by(Conversion.waba_id)
            .order_by(Conversion.waba_id)
        ).all()
        for waba_id, count, next_at in waiting:
            account = registry.get_account(session, waba_id)
            events = f"{count} event{'s' if count != 1 else ''}"
            if account is not None and account.status == Account.PAUSED:
                lines.append(
                    f"account {waba_id}: paused until {isoformat(account.probe_at)} (its next "
                    f"probe), {events} waiting: {account.status_reason}"
                )
                continue
            if (
                account is not None
                and account.throttled_until is not None
                and account.throttled_until > now
            ):
                lines.append(
                    f"account {waba_id}: throttled until {isoformat(account.throttled_until)}, "
                    f"{events} waiting: {account.throttle_reason}"
                )
                continue
            held = session.scalar(
                select(Conversion.last_error)
                .where(
                    Conversion.waba_id == waba_id,
                    Conversion.status == Conversion.PENDING,
                    is_held(),
                )
                .limit(1)
            )
            reason = held_reason(held)
            if reason is not None:
                lines.append(f"account {waba_id}: {events} held: {reason}")
            elif next_at is not None and next_at > now:
                lines.append(f"account {waba_id}: {events} backing off until {isoformat(next_at)}")
            elif (
                account is not None
                and account.dispatch_leased_until is not None
                and account.dispatch_leased_until > now
            ):
                lines.append(
                    f"account {waba_id}: {events} due, another dispatcher has the account "
                    f"until {isoformat(account.dispatch_leased_until)}"
                )
            else:
                lines.append(f"account {waba_id}: {events} due; run again to send them")
    return lines


def resume_account(services: Services, waba_id: str) -> AccountView:
    """Send a paused account's events again now; if the cause remains, Meta's next answer
    pauses it again with the same reason."""
    with services.db.transaction() as session:
        account = registry.get_account(session, meta_id(waba_id, "the WABA id"))
        if account is None:
            raise AccountError(f"no account {waba_id}")
        registry.resume(account, "resumed by the operator")
        session.flush()
        return _view(account, services)
