"""Where an account's events go: the Graph API, a Conversions API Gateway, or both.

A destination sends one batch and either returns (every event accepted) or raises
:class:`Refusal`: what the dispatcher must do with the batch (a :class:`Disposition`) and the
words for the operator. The dispatcher knows nothing else about a destination.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from waconv.clock import utcnow
from waconv.conversions import throttle
from waconv.conversions.throttle import Throttle
from waconv.gateway.client import GatewayError
from waconv.graph.errors import Disposition, GraphError, classify, operator_message

if TYPE_CHECKING:
    from waconv.accounts.registry import Credentials
    from waconv.graph.client import GraphClient
    from waconv.services import Services

GRAPH = "graph"
GATEWAY = "gateway"
BOTH = "both"


@dataclass(frozen=True)
class Routing:
    """An account's destination setting and its Gateway event filter."""

    destination: str = GRAPH
    # When set, only these events go to the Gateway; the others go to Graph.
    gateway_events: frozenset[str] | None = None

    @property
    def graph_only(self) -> bool:
        return self.destination == GRAPH

    @property
    def uses_graph(self) -> bool:
        return self.destination != GATEWAY or self.gateway_events is not None

    @property
    def uses_gateway(self) -> bool:
        return self.destination != GRAPH

    def targets(self, event_name: str) -> tuple[str, ...]:
        """The destinations of one event (never none: the filter never drops an event)."""
        if self.destination == GRAPH:
            return (GRAPH,)
        to_gateway = self.gateway_events is None or event_name in self.gateway_events
        if self.destination == GATEWAY:
            return (GATEWAY,) if to_gateway else (GRAPH,)
        return (GRAPH, GATEWAY) if to_gateway else (GRAPH,)


@dataclass(frozen=True)
class Receipt:
    """What one request was and what came back, for the request log."""

    at: datetime  # when it was sent
    bytes: int = 0
    duration_ms: int = 0
    http_status: int | None = None  # None: no answer
    events_received: int | None = None
    fbtrace_id: str | None = None
    messages: list[Any] = field(default_factory=list)
    # Accepted, but Meta's usage headers say a rate limit is reached: hold the account.
    throttle: Throttle | None = None


def _since(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


class Refusal(Exception):
    """A destination did not take a batch: what to do with it, and why, for the operator."""

    def __init__(
        self,
        destination: str,
        disposition: Disposition,
        sentence: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
        code_label: str | None = None,
        title: str | None = None,
        message: str | None = None,
        fbtrace_id: str | None = None,
        receipt: Receipt | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        super().__init__(sentence)
        self.throttle = throttle  # a rate limit: the account (or app) backs off as a whole
        self.receipt = receipt  # the request, when one was made
        self.destination = destination
        self.disposition = disposition
        self.sentence = sentence
        self.code = code
        self.subcode = subcode
        self.code_label = code_label  # Meta's ``100/33``, for an account's pause
        self.title = title
        self.message = message
        self.fbtrace_id = fbtrace_id

    def error_values(self, sentence: str) -> dict[str, Any]:
        """The conversion's ``last_error*`` columns, with ``sentence`` as ``last_error``."""
        return {
            "last_error": sentence,
            "last_error_code": self.code,
            "last_error_subcode": self.subcode,
            "last_error_title": self.title,
            "last_error_message": self.message,
            "last_error_fbtrace_id": self.fbtrace_id,
        }


class Destination(Protocol):
    name: str

    def send(self, creds: Credentials, events: Sequence[Mapping[str, Any]]) -> Receipt:
        """Deliver ``events``; raises :class:`Refusal` unless every one was accepted."""


class GraphDestination:
    name = GRAPH

    def __init__(self, graph: GraphClient, *, test_event_code: str | None = None) -> None:
        self.graph = graph
        self.test_event_code = test_event_code or None

    def send(self, creds: Credentials, events: Sequence[Mapping[str, Any]]) -> Receipt:
        assert creds.token is not None and creds.dataset_id is not None
        at, start = utcnow(), time.perf_counter()
        try:
            result = self.graph.send_events(
                creds.dataset_id,
                creds.token,
                events,
                partner_agent=creds.partner_agent,
                test_event_code=self.test_event_code,
            )
        except GraphError as err:
            receipt = Receipt(
                at,
                err.request_bytes,
                _since(start),
                err.http_status,
                err.events_received,
                err.fbtrace_id,
            )
            raise Refusal(
                GRAPH,
                classify(err),
                operator_message(err, waba_id=creds.waba_id),
                code=err.code,
                subcode=err.subcode,
                code_label=err.code_label if err.code is not None else None,
                title=err.user_title or err.type,
                message=err.user_msg or err.message,
                fbtrace_id=err.fbtrace_id,
                receipt=receipt if err.request_bytes else None,
                throttle=throttle.of_error(err),
            ) from None
        return Receipt(
            at,
            result.bytes,
            _since(start),
            result.http_status,
            result.events_received,
            result.fbtrace_id,
            result.messages,
            throttle.of_usage(result.usage),
        )


def gateway_disposition(err: GatewayError) -> Disposition:
    """429, 5xx and network failures are retried; any other answer refuses the batch as it is
    (the Gateway does not say which event it minds, so it is never split)."""
    status = err.http_status
    if err.too_large:  # a smaller request goes through: split
        return Disposition.INVALID
    if status is None or status == 429 or status >= 500:
        return Disposition.RETRY
    return Disposition.REFUSED


def gateway_sentence(err: GatewayError, waba_id: str) -> str:
    if err.too_large:
        return f"the request was too large for the Conversions API Gateway ({err})"
    if gateway_disposition(err) is Disposition.RETRY:
        return f"the Conversions API Gateway did not take the events ({err}); waconv retries"
    return (
        f"the Conversions API Gateway refused the events ({err}); check the Gateway URL and "
        f"access key: `waconv accounts set --waba-id {waba_id} --destination ... --gateway-url "
        "URL --gateway-key-stdin`"
    )


class GatewayDestination:
    name = GATEWAY

    def __init__(self, services: Services) -> None:
        self.services = services

    def send(self, creds: Credentials, events: Sequence[Mapping[str, Any]]) -> Receipt:
        assert creds.gateway_url and creds.gateway_key and creds.dataset_id
        client = self.services.gateway(creds.gateway_url)
        at, start = utcnow(), time.perf_counter()
        try:
            status, size = client.send_events(creds.dataset_id, creds.gateway_key, events)
        except GatewayError as err:
            sent = err.request_bytes and not (err.too_large and err.http_status is None)
            raise Refusal(
                GATEWAY,
                gateway_disposition(err),
                gateway_sentence(err, creds.waba_id),
                message=err.message,
                receipt=Receipt(at, err.request_bytes, _since(start), err.http_status)
                if sent
                else None,
            ) from None
        return Receipt(at, size, _since(start), status)
