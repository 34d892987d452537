"""What went wrong on a Graph API call, and what to do about it.

Three things live here, and only here:

* :class:`GraphError` - one exception for every failed call: Meta's error envelope, a network
  failure, or a 200 that did not acknowledge every event.
* :data:`CLASSIFICATION` - the one table that turns an error into a :class:`Disposition`
  (retry later / the content is bad / the account is misconfigured). Decided by Meta's
  ``code``, ``error_subcode`` and ``is_transient``, not by the HTTP status alone
  (reference §3.9, gotcha 16).
* :func:`operator_message` - one line an operator can act on.

No token ever reaches this module: the client redacts its token from Meta's texts
(:meth:`GraphError.redact`) before raising.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from waconv.conversions.events import EVENT_NAMES

if TYPE_CHECKING:
    from waconv.graph.usage import Usage

# How much of a non-JSON body (an HTML error page from a proxy or a 5xx) goes into the message:
# enough to recognise it, not a whole page in every log line.
MAX_BODY_EXCERPT = 80

# The 14 event names Meta accepts with action_source=business_messaging (reference §3.4).
BUSINESS_MESSAGING_EVENT_NAMES = EVENT_NAMES  # defined once, with the event validation

_WHITESPACE = re.compile(r"\s+")


def _one_line(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def _as_int(value: Any) -> int | None:
    """Meta sends codes as ints; tolerate numeric strings, drop anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _as_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


class GraphError(Exception):
    """A Graph API call that did not do what was asked.

    ``network`` is True when no (complete) answer came back: timeout, reset, refused connection.
    ``partial`` is True for a 200 whose ``events_received`` differs from the events sent.
    ``http_status`` is None for network errors.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        code: int | None = None,
        subcode: int | None = None,
        type: str | None = None,
        user_title: str | None = None,
        user_msg: str | None = None,
        fbtrace_id: str | None = None,
        is_transient: bool = False,
        network: bool = False,
        partial: bool = False,
        too_large: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.code = code
        self.subcode = subcode
        self.type = type
        self.user_title = user_title
        self.user_msg = user_msg
        self.fbtrace_id = fbtrace_id
        self.is_transient = is_transient
        self.network = network
        self.partial = partial
        # The request body was over waconv's byte cap (never sent) or answered 413.
        self.too_large = too_large or http_status == 413
        # Of an events request, for the request log: its body's size, Meta's receipt.
        self.request_bytes = 0
        self.events_received: int | None = None
        self.usage: Usage | None = None  # Meta's usage headers on the answer

    @classmethod
    def from_response(cls, status: int, body: Mapping[str, Any] | None, text: str) -> GraphError:
        """Build the error from an HTTP answer: Meta's ``{"error": {...}}`` envelope when there
        is one, else a short description of what came back instead (``text`` is the raw body,
        used only for an excerpt)."""
        envelope = body.get("error") if isinstance(body, Mapping) else None
        if isinstance(envelope, Mapping):
            return cls(
                _one_line(str(envelope.get("message") or "no message")),
                http_status=status,
                code=_as_int(envelope.get("code")),
                subcode=_as_int(envelope.get("error_subcode")),
                type=_as_str(envelope.get("type")),
                user_title=_as_str(envelope.get("error_user_title")),
                user_msg=_as_str(envelope.get("error_user_msg")),
                fbtrace_id=_as_str(envelope.get("fbtrace_id")),
                is_transient=envelope.get("is_transient") is True,
            )
        if body is None:
            excerpt = _one_line(re.sub(r"<[^>]*>", " ", text or ""))[:MAX_BODY_EXCERPT]
            message = f"non-JSON response body ({excerpt!r})" if excerpt else "empty response body"
        else:
            message = "response without Meta's error envelope"
        fbtrace = body.get("fbtrace_id") if isinstance(body, Mapping) else None
        return cls(message, http_status=status, fbtrace_id=_as_str(fbtrace))

    def redact(self, *secrets: str | None) -> GraphError:
        """Replace every occurrence of ``secrets`` in the texts (in place); returns self.

        Meta does not echo tokens in its messages, but a proxy error page or a future message
        might; the client calls this with its token before raising.
        """
        for secret in secrets:
            if not secret:
                continue
            self.message = self.message.replace(secret, "[redacted]")
            if self.user_title:
                self.user_title = self.user_title.replace(secret, "[redacted]")
            if self.user_msg:
                self.user_msg = self.user_msg.replace(secret, "[redacted]")
        self.args = (self.message,)
        return self

    @property
    def code_label(self) -> str:
        """``100/2804087``, ``190``, or ``-`` when Meta sent no code."""
        if self.code is None:
            return "-"
        return f"{self.code}/{self.subcode}" if self.subcode is not None else str(self.code)

    def __str__(self) -> str:
        if self.network:
            return f"Graph network error: {self.message}"
        code = f" {self.code_label}" if self.code is not None else ""
        status = f" (HTTP {self.http_status})" if self.http_status is not None else ""
        detail = self.user_title or self.user_msg
        extra = f" \u2014 {detail}" if detail and detail != self.message else ""
        trace = f" [fbtrace {self.fbtrace_id}]" if self.fbtrace_id else ""
        return _one_line(f"Graph error{code}{status}: {self.message}{extra}{trace}")

    def __repr__(self) -> str:
        return (
            f"GraphError(http_status={self.http_status!r}, code={self.code!r}, "
            f"subcode={self.subcode!r}, type={self.type!r}, message={self.message!r}, "
            f"fbtrace_id={self.fbtrace_id!r}, is_transient={self.is_transient!r}, "
            f"network={self.network!r}, partial={self.partial!r})"
        )


class Disposition(enum.Enum):
    """What the caller does with the events of a failed request."""

    # Nothing wrong with the events: try the same request later, with backoff.
    RETRY = "retry"
    # The request content is bad: split the batch to find the bad event; never resend as is.
    INVALID = "invalid"
    # The account's token, permissions or dataset are wrong: stop sending for that account and
    # keep its events until an operator fixes it.
    ACCOUNT = "account"
    # The destination refused the batch without naming an event (a Conversions API Gateway's
    # 4xx): every event of it fails there as it is, never split or resent.
    REFUSED = "refused"


# Throttling codes (reference §3.9): 4 app limit, 17 user limit, 32 page limit, 341 application
# limit, 613 ad-account calls; 80000-80099 are the Business Use Case limits (80004 ...).
RATE_LIMIT_CODES = frozenset({4, 17, 32, 341, 613})
# Of those, the limits of the whole app (every account it sends for), not of one account.
APP_RATE_LIMIT_CODES = frozenset({4, 341})
BUC_RATE_LIMIT_CODES = range(80000, 80100)
# Meta's own "temporary" codes: 1 unknown / downtime, 2 service unavailable.
TEMPORARY_CODES = frozenset({1, 2})
# 368: temporarily blocked for policy reasons; Meta says wait and retry.
POLICY_BLOCK_CODE = 368
TOKEN_CODE = 190  # expired, revoked or invalid access token (any subcode)
# Permission codes: 3 capability, 10 permission denied, 200-299 the permissions family.
PERMISSION_CODES = frozenset({3, 10, *range(200, 300)})
INVALID_PARAMETER_CODE = 100
SUBCODE_DATASET_UNREACHABLE = 33  # 100/33: object missing or token lacks access to it
SUBCODE_INVALID_EVENT_NAME = 2804066
SUBCODE_INVALID_CTWA_CLID = 2804087
SUBCODE_DATASET_NOT_LINKED = 2804132  # no WhatsApp Business Account linked to this dataset
ENDPOINT_CODES = frozenset({2500, 803})  # unknown path components; unknown object alias
ACCOUNT_SUBCODES_OF_100 = frozenset({SUBCODE_DATASET_UNREACHABLE, SUBCODE_DATASET_NOT_LINKED})


def is_rate_limit(err: GraphError) -> bool:
    return err.code is not None and (
        err.code in RATE_LIMIT_CODES or err.code in BUC_RATE_LIMIT_CODES
    )


# Parameters of an events request that are not events: Meta names them in a code 100 about
# the request itself.
REQUEST_PARAMETERS = ("appsecret_proof", "partner_agent", "test_event_code", "access_token")


def names_a_request_parameter(err: GraphError) -> bool:
    text = f"{err.message} {err.user_msg or ''}".lower()
    return err.code == INVALID_PARAMETER_CODE and any(name in text for name in REQUEST_PARAMETERS)


def _status_between(err: GraphError, low: int, high: int) -> bool:
    return err.http_status is not None and low <= err.http_status <= high


# What an operator should do, from the error, the WABA id, and what happens next ("waconv
# retries with backoff" or "run the command again").
Advice = Callable[[GraphError, str, str], str]


@dataclass(frozen=True)
class Rule:
    """One row of :data:`CLASSIFICATION`: when ``applies`` to an error, ``disposition`` wins
    and ``advice`` tells the operator what to do."""

    name: str
    applies: Callable[[GraphError], bool]
    disposition: Disposition
    advice: Advice


def _meta_answered(err: GraphError, waba: str, again: str) -> str:
    detail = err.user_title or err.user_msg
    said = f"{err.message}: {detail}" if detail and detail != err.message else err.message
    return f"Meta answered: {said}"


def _temporary(err: GraphError, waba: str, again: str) -> str:
    return f"Meta had a temporary failure ({err.message}); {again}"


def _endpoint(err: GraphError, waba: str, again: str) -> str:
    return (
        f"the Graph API does not know this address ({err.message}); check "
        "WACONV_GRAPH_URL, WACONV_GRAPH_VERSION and the account's dataset id"
    )


RETRY, INVALID, ACCOUNT = Disposition.RETRY, Disposition.INVALID, Disposition.ACCOUNT

# THE classification table. First matching row wins; the last row matches everything.
CLASSIFICATION: tuple[Rule, ...] = (
    # Timeout, reset, refused: the request may or may not have arrived; same event_ids again.
    Rule(
        "network",
        lambda e: e.network,
        RETRY,
        lambda e, w, again: (
            f"could not reach the Graph API ({e.message}); {again}, and check the network "
            "path to WACONV_GRAPH_URL if it persists"
        ),
    ),
    # 200 but fewer (or more) events acknowledged than sent: resend the same batch.
    Rule(
        "partial-receipt",
        lambda e: e.partial,
        RETRY,
        lambda e, w, again: (
            f"{e.message}; waconv sends the same events again with the same event_id"
        ),
    ),
    # Over the byte cap, or a 413: a smaller request goes through; split, never pause.
    Rule(
        "too-large",
        lambda e: e.too_large,
        INVALID,
        lambda e, w, again: f"the request was too large ({e.message}); waconv splits the batch",
    ),
    # 4, 17, 32, 341, 613, 80000-80099: throttled; back off, the content is fine.
    Rule(
        "rate-limit",
        is_rate_limit,
        RETRY,
        lambda e, w, again: (
            f"Meta is rate-limiting these calls; {again}, and check the app's Marketing API "
            "access tier if it persists"
        ),
    ),
    # 368: temporarily blocked for policy reasons; wait, then retry (rare).
    Rule(
        "policy-block",
        lambda e: e.code == POLICY_BLOCK_CODE,
        RETRY,
        lambda e, w, again: (
            f"Meta temporarily blocked the app or account for policy reasons; {again}"
        ),
    ),
    # Meta itself says "try again": that wins over whatever code comes with it.
    Rule("meta-transient", lambda e: e.is_transient, RETRY, _temporary),
    # 1 / 2: Meta's temporary failures.
    Rule("meta-temporary", lambda e: e.code in TEMPORARY_CODES, RETRY, _temporary),
    # 190, any subcode: the token is expired/revoked; nothing succeeds until it is replaced.
    Rule(
        "token",
        lambda e: e.code == TOKEN_CODE,
        ACCOUNT,
        lambda e, waba, again: (
            "the access token was rejected (expired or revoked); set a new one with "
            f"`waconv accounts set-token --waba-id {waba}` or WACONV_ACCESS_TOKEN"
        ),
    ),
    # 3, 10, 200-299: the token lacks a permission; fix the app/system user, not the events.
    Rule(
        "permission",
        lambda e: e.code in PERMISSION_CODES,
        ACCOUNT,
        lambda e, w, again: (
            "the token lacks a permission: grant whatsapp_business_manage_events (events, "
            "datasets) and whatsapp_business_management (subscribing the app) to the app and "
            "its system user"
        ),
    ),
    # 100/33: wrong dataset, or the token has no access to it.
    Rule(
        "dataset-unreachable",
        lambda e: e.code == INVALID_PARAMETER_CODE and e.subcode == SUBCODE_DATASET_UNREACHABLE,
        ACCOUNT,
        lambda e, w, again: (
            "the token cannot reach that dataset (object missing or no permission): assign "
            "the system user to the dataset with the UPLOAD task"
        ),
    ),
    # 100/2804132: the dataset is not linked to the WABA.
    Rule(
        "dataset-not-linked",
        lambda e: e.code == INVALID_PARAMETER_CODE and e.subcode == SUBCODE_DATASET_NOT_LINKED,
        ACCOUNT,
        lambda e, waba, again: (
            f"the dataset is not linked to WhatsApp Business Account {waba}: run "
            f"`waconv provision-dataset --waba-id {waba}`"
        ),
    ),
    # 100 naming a parameter of the request, not of an event (an app that requires
    # appsecret_proof, a bad partner_agent or test_event_code): split down, every event would
    # fail alone for the configuration's sake. The account waits for the fix instead.
    Rule(
        "request-parameter",
        names_a_request_parameter,
        ACCOUNT,
        lambda e, w, again: (
            f"Meta refused a parameter of the request, not an event ({e.message}); events "
            "are held until it is fixed: WACONV_APPSECRET_PROOF=true if the app requires "
            "appsecret_proof (with WACONV_APP_SECRET), else check WACONV_PARTNER_AGENT and "
            "WACONV_TEST_EVENT_CODE"
        ),
    ),
    # 100/2804066: a name Meta does not take for business messaging (Lead ...).
    Rule(
        "invalid-event-name",
        lambda e: e.code == INVALID_PARAMETER_CODE and e.subcode == SUBCODE_INVALID_EVENT_NAME,
        INVALID,
        lambda e, w, again: (
            "the event name is not allowed for business messaging; fix the rule's `event` "
            f"(allowed: {', '.join(sorted(BUSINESS_MESSAGING_EVENT_NAMES))})"
        ),
    ),
    # 100/2804087: Meta does not know the click id.
    Rule(
        "invalid-ctwa-clid",
        lambda e: e.code == INVALID_PARAMETER_CODE and e.subcode == SUBCODE_INVALID_CTWA_CLID,
        INVALID,
        lambda e, w, again: (
            "Meta rejected the event's ctwa_clid (unknown, expired, or a test value); this "
            "event cannot be attributed and is not retried"
        ),
    ),
    # 100 with any other subcode (2804003 event_time ...) or none, whatever the HTTP status:
    # the whole batch was rejected because of its content (never retried, gotcha 16).
    Rule("invalid-parameter", lambda e: e.code == INVALID_PARAMETER_CODE, INVALID, _meta_answered),
    # Server-side failure without a code we know (HTML 5xx page, 503 ...).
    Rule("http-5xx", lambda e: _status_between(e, 500, 599), RETRY, _temporary),
    # 2500 unknown path / 803 unknown alias: a wrong WACONV_GRAPH_URL, version or dataset id.
    # Blaming the events would fail every one of them; it is the configuration.
    Rule("endpoint", lambda e: e.code in ENDPOINT_CODES, ACCOUNT, _endpoint),
    # 408 / 429 without a code we know: the transport asks us to come back later.
    Rule("http-408-429", lambda e: e.http_status in (408, 429), RETRY, _meta_answered),
    # A 4xx without any code (a proxy's or a wrong host's 404 page): the address is wrong.
    Rule(
        "http-4xx-no-code",
        lambda e: e.code is None and _status_between(e, 400, 499),
        ACCOUNT,
        _endpoint,
    ),
    # Any other 4xx: about the request, not its events. Meta reports bad events as 100; a code
    # we do not know (2635 deprecated version, 12 deprecated field ...) is the configuration.
    # Failing the events would lose every one; the account is paused and its events wait.
    Rule("http-4xx", lambda e: _status_between(e, 400, 499), ACCOUNT, _meta_answered),
    # Anything unknown: retrying is safe, the outbox expires events before the 7-day limit.
    Rule("unknown", lambda e: True, RETRY, _meta_answered),
)


def matching_rule(err: GraphError) -> Rule:
    """The row of :data:`CLASSIFICATION` that decides ``err`` (its ``name`` is log-friendly)."""
    for rule in CLASSIFICATION:
        if rule.applies(err):
            return rule
    raise AssertionError("CLASSIFICATION ends with a catch-all row")  # pragma: no cover


def classify(err: GraphError) -> Disposition:
    return matching_rule(err).disposition


def _meta_reference(err: GraphError) -> str:
    """``(Meta error 100/2804087, HTTP 400, fbtrace AbC)`` - what Meta support asks for."""
    if err.network:
        return "(network error, no Meta error code)"
    parts = [f"Meta error {err.code_label}" if err.code is not None else "no Meta error code"]
    if err.http_status is not None:
        parts.append(f"HTTP {err.http_status}")
    if err.fbtrace_id:
        parts.append(f"fbtrace {err.fbtrace_id}")
    return f"({', '.join(parts)})"


def operator_message(
    err: GraphError,
    *,
    waba_id: str | None = None,
    action: str = "send events",
    retried: bool = True,
) -> str:
    """One line for an operator: what failed, what to do, and Meta's code/subcode/fbtrace id.
    ``retried``: whether waconv tries again by itself (the dispatcher) or the operator must
    (a command).

    Never contains a token: it only uses the error's (already redacted) fields.
    """
    waba = waba_id or "<id>"
    where = f" for WhatsApp Business Account {waba_id}" if waba_id else ""
    # What happens next: the dispatcher tries again by itself, a command does not.
    again = "waconv retries with backoff" if retried else "run the command again"
    advice = matching_rule(err).advice(err, waba, again)
    return _one_line(f"cannot {action}{where}: {advice} {_meta_reference(err)}")
