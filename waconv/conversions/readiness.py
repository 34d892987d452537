"""Whether an account can send now: its credentials, its dataset (provisioned automatically
once an hour while missing), its Gateway settings; and holding its events, with the reason,
when it cannot."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import update
from sqlalchemy.orm import Session

from waconv.accounts import registry
from waconv.accounts.registry import Credentials
from waconv.accounts.service import AccountError, provision_dataset
from waconv.clock import utcnow
from waconv.config import ConfigError, Settings
from waconv.conversions.held import held
from waconv.conversions.queue import is_due, rowcount
from waconv.metrics import CONVERSION_EVENTS, GRAPH_REQUESTS
from waconv.models import Account, Conversion

if TYPE_CHECKING:
    from waconv.graph.client import GraphClient
    from waconv.services import Services

log = logging.getLogger(__name__)

# A WABA whose dataset could not be created automatically is tried again this often (a
# transient Graph failure must not hold its events until an operator steps in).
PROVISION_RETRY = timedelta(hours=1)
# Events of an account that cannot send (no token, no dataset) are looked at again after this.
HOLD_DELAY = timedelta(seconds=60)


@dataclass(frozen=True)
class Readiness:
    """An account at the start of its turn: what it sends with, or why its events wait."""

    creds: Credentials | None
    problem: str | None = None  # the held events' last_error
    probing: bool = False  # paused: one event tries whether Meta takes the account again
    provision: bool = False  # no dataset yet: get one (with no transaction open) first


def credentials(account: Account, settings: Settings) -> tuple[Credentials | None, str | None]:
    """The account's credentials, or why its events must wait."""
    try:
        creds = registry.credentials(account, settings)
    except ConfigError as exc:  # a stored secret does not open with this key, or bad events
        return None, held(f"cannot read the settings of {account.waba_id}: {exc}")
    if creds.token is None and creds.routing.uses_graph:
        return None, held(
            f"no access token for WhatsApp Business Account {account.waba_id}; run "
            f"`waconv accounts set-token --waba-id {account.waba_id}` or set "
            "WACONV_ACCESS_TOKEN"
        )
    if creds.routing.uses_gateway and not (creds.gateway_url and creds.gateway_key):
        return None, held(
            f"WhatsApp Business Account {account.waba_id} sends to a Conversions API "
            "Gateway but has no Gateway URL or access key; run `waconv accounts set "
            f"--waba-id {account.waba_id} --destination {creds.routing.destination} "
            "--gateway-url URL --gateway-key-stdin` or set WACONV_GATEWAY_URL and "
            "WACONV_GATEWAY_ACCESS_KEY"
        )
    return creds, None


def no_dataset(waba_id: str) -> str:
    return held(
        f"WhatsApp Business Account {waba_id} has no dataset; run "
        f"`waconv provision-dataset --waba-id {waba_id}`"
    )


def check(account: Account, settings: Settings) -> Readiness:
    """The account's readiness, in the caller's transaction. A missing dataset is marked
    tried now (committed with the caller's transaction, before the call: one try, whoever
    gets here first)."""
    creds, problem = credentials(account, settings)
    probing = account.status == Account.PAUSED
    provision = False
    if creds is not None and creds.dataset_id is None:
        tried = account.dataset_provision_tried_at
        if creds.token is None:  # a Gateway-only account: nothing to provision with
            problem = no_dataset(account.waba_id)
        elif tried is None or utcnow() - tried >= PROVISION_RETRY:
            account.dataset_provision_tried_at = utcnow()
            provision = True
        else:
            problem = no_dataset(account.waba_id)
    return Readiness(creds, problem, probing, provision)


def provision(services: Services, creds: Credentials, graph: GraphClient) -> Credentials:
    """A WABA without a dataset gets one once, automatically, when the token allows it."""
    waba_id = creds.waba_id
    try:
        provision_dataset(services, waba_id, graph=graph, retried=True)
    except AccountError as exc:
        GRAPH_REQUESTS.labels(endpoint="dataset", outcome="error").inc()
        log.error("account.provision_failed waba_id=%s reason=%s", waba_id, exc)
        return creds
    GRAPH_REQUESTS.labels(endpoint="dataset", outcome="ok").inc()
    with services.db.transaction() as session:
        account = registry.get_account(session, waba_id)
        if account is None:
            return creds
        new, _ = credentials(account, services.settings)
    return new or creds


def hold(session: Session, waba_id: str, reason: str) -> int:
    """Park the account's due events for HOLD_DELAY with ``reason``; how many."""
    now = utcnow()
    result = session.execute(
        update(Conversion)
        .where(Conversion.waba_id == waba_id, is_due(now))
        .values(next_attempt_at=now + HOLD_DELAY, last_error=reason)
        .execution_options(synchronize_session=False)
    )
    count = rowcount(result)
    if count:
        CONVERSION_EVENTS.labels(outcome="held").inc(count)
        log.warning("conversion.held waba_id=%s count=%s reason=%s", waba_id, count, reason)
    return count
