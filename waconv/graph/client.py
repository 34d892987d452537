"""A small Graph API client: conversion events, the WABA's dataset, the app subscription.

One injected ``requests.Session`` (connection reuse matters at 1,000-event batches), an explicit
``timeout=`` on every call, the token only in the ``Authorization`` header. Every failure leaves
as :class:`~waconv.graph.errors.GraphError`; :func:`~waconv.graph.errors.classify` says what to
do with it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson
import requests

from waconv.config import MAX_DISPATCH_CONCURRENCY
from waconv.graph.errors import GraphError
from waconv.graph.usage import Usage

MAX_EVENTS = 1000  # Meta rejects larger requests (the whole request, reference §3.6)
# Bytes of one events request body at most. Meta documents no limit; this is its webhook
# payload limit (3 MB), some 6,000 typical events: only batches of large contents reach it.
MAX_REQUEST_BYTES = 3 * 1024 * 1024
DEFAULT_TIMEOUT = 30.0  # seconds; Meta answers most posts in < 600 ms, big batches take longer
# urllib3 error texts start with "<urllib3.connection.HTTPConnection object at 0x...>: ".
_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-f]+>:?\s*")
MAX_REASON_LENGTH = 200  # of a connection error's reason, to keep log lines short

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class EventsResult:
    """Meta's answer to an events post (only ever built when every event was acknowledged)."""

    events_received: int
    messages: list[Any] = field(default_factory=list)
    fbtrace_id: str | None = None
    http_status: int = 200
    bytes: int = 0  # of the request body
    usage: Usage | None = None  # Meta's usage headers


def appsecret_proof(app_secret: str, token: str) -> str:
    """hex HMAC-SHA256(key=app secret, msg=token), as Meta's SDK computes it."""
    return hmac.new(app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def _segment(value: str, what: str) -> str:
    """One URL path segment; ids are numeric, but never let one add a path or a query."""
    text = str(value).strip()
    if not text:
        raise ValueError(f"{what} is empty")
    return quote(text, safe="")


def _connection_reason(exc: BaseException) -> str:
    """The useful part of a requests/urllib3 connection error, without the URL (which carries
    the appsecret_proof) or the prepared request."""
    reason: object = exc
    inner = exc.args[0] if exc.args else None
    nested = getattr(inner, "reason", None)
    if nested is not None:
        reason = nested
    elif isinstance(inner, BaseException):
        reason = inner
    # ProtocolError('Connection aborted.', RemoteDisconnected(...)) -> the inner exception.
    args: tuple[Any, ...] = getattr(reason, "args", ())
    if len(args) == 2 and isinstance(args[1], BaseException):
        reason = args[1]
    text = _OBJECT_REPR.sub("", str(reason)).strip() or type(reason).__name__
    return text[:MAX_REASON_LENGTH]


def _session_for(base_url: str) -> requests.Session:
    """A session for one host that reads the environment's proxy and CA bundle settings
    (``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``...) once, here: by default requests
    reads them again for every request, walking the whole environment (profiled: the largest
    CPU cost of a 1,000-event request after building it)."""
    session = requests.Session()
    # As many pooled connections as a dispatcher keeps requests in flight.
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=MAX_DISPATCH_CONCURRENCY)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    found = session.merge_environment_settings(base_url, {}, None, None, None)
    session.proxies.update(found["proxies"])
    session.verify = found["verify"]
    session.trust_env = False
    return session


class GraphClient:
    """Graph API calls for one base URL and version; the token is passed per call because each
    WhatsApp Business Account may have its own.

    Not thread-safe beyond what ``requests.Session`` is: give each dispatcher thread its own
    client, or its own session.
    """

    def __init__(
        self,
        base_url: str,
        version: str,
        *,
        session: requests.Session | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        app_secret: str | None = None,
    ) -> None:
        if not base_url:
            raise ValueError("base_url is empty")
        if not version:
            raise ValueError("version is empty")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.base_url = base_url.rstrip("/")
        self.version = version.strip("/")
        self.timeout = timeout
        self._owns_session = session is None
        self.session = session if session is not None else _session_for(self.base_url)
        self._app_secret = app_secret or None
        self.max_bytes = MAX_REQUEST_BYTES

    def __repr__(self) -> str:
        return f"GraphClient(base_url={self.base_url!r}, version={self.version!r})"

    def close(self) -> None:
        """Close the session if this client created it (an injected one belongs to the caller)."""
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> GraphClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        return f"{self.base_url}/{self.version}/{path}"

    # -- calls -------------------------------------------------------------------------------

    def send_events(
        self,
        dataset_id: str,
        token: str,
        events: Sequence[Mapping[str, Any]],
        *,
        partner_agent: str | None = None,
        test_event_code: str | None = None,
    ) -> EventsResult:
        """``POST /{dataset_id}/events``. Raises GraphError unless Meta acknowledged every event
        (``events_received == len(events)``); a short receipt is ``partial=True`` (retry)."""
        if not events:
            raise ValueError("no events to send")
        if len(events) > MAX_EVENTS:
            raise ValueError(f"{len(events)} events in one request; Meta accepts {MAX_EVENTS}")
        body: JsonObject = {"data": events}
        if partner_agent:
            body["partner_agent"] = partner_agent
        if test_event_code:
            body["test_event_code"] = test_event_code
        # Serialised once, compactly, and sent as bytes: 1,000-event batches are the hot path
        # (orjson: 8 ms -> 1 ms per 1,000 events, the dispatcher's largest CPU cost after the
        # database).
        payload = orjson.dumps(body)
        if len(payload) > self.max_bytes:
            raise GraphError(
                f"{len(events)} events make {len(payload)} bytes, over the cap of {self.max_bytes}",
                too_large=True,
            )
        try:
            status, answer, usage = self._call(
                "POST", f"{_segment(dataset_id, 'dataset_id')}/events", token, payload
            )
        except GraphError as err:
            err.request_bytes = len(payload)
            raise
        received = answer.get("events_received")
        fbtrace_id = answer.get("fbtrace_id")
        fbtrace = str(fbtrace_id) if fbtrace_id else None
        if not isinstance(received, int) or isinstance(received, bool) or received != len(events):
            partial = GraphError(
                f"Meta acknowledged {received if isinstance(received, int) else 0} "
                f"of {len(events)} events",
                http_status=status,
                fbtrace_id=fbtrace,
                partial=True,
            )
            partial.request_bytes = len(payload)
            partial.events_received = received if isinstance(received, int) else None
            partial.usage = usage
            raise partial
        messages = answer.get("messages")
        return EventsResult(
            events_received=received,
            messages=list(messages) if isinstance(messages, list) else [],
            fbtrace_id=fbtrace,
            http_status=status,
            bytes=len(payload),
            usage=usage,
        )

    def create_dataset(self, waba_id: str, token: str, name: str | None = None) -> str:
        """``POST /{waba_id}/dataset``: Meta's get-or-create, so it is safe to call again; returns
        the dataset id."""
        body: JsonObject = {"dataset_name": name} if name else {}
        status, answer, _ = self._call(
            "POST", f"{_segment(waba_id, 'waba_id')}/dataset", token, json.dumps(body).encode()
        )
        dataset_id = answer.get("id")
        if not dataset_id:
            raise GraphError("dataset answer without an id", http_status=status)
        return str(dataset_id)

    def get_dataset(self, waba_id: str, token: str) -> str | None:
        """``GET /{waba_id}/dataset``: the dataset id, or None when the WABA has none yet.

        Meta documents ``{"id": ...}`` and was observed answering ``{"data": [{"id": ...}]}``
        (reference §3.2); both are accepted.
        """
        _, answer, _ = self._call("GET", f"{_segment(waba_id, 'waba_id')}/dataset", token, None)
        if answer.get("id"):
            return str(answer["id"])
        data = answer.get("data")
        if isinstance(data, list):
            for item in data:
                if isinstance(item, Mapping) and item.get("id"):
                    return str(item["id"])
        return None

    def subscribe_app(self, waba_id: str, token: str) -> None:
        """``POST /{waba_id}/subscribed_apps``: the token's app receives that WABA's webhooks."""
        status, answer, _ = self._call(
            "POST", f"{_segment(waba_id, 'waba_id')}/subscribed_apps", token, b"{}"
        )
        if answer.get("success") is not True:
            raise GraphError("subscribed_apps did not answer success", http_status=status)

    # -- transport ---------------------------------------------------------------------------

    def _call(
        self, method: str, path: str, token: str, payload: bytes | None
    ) -> tuple[int, JsonObject, Usage | None]:
        """One request; returns (status, JSON object, Meta's usage headers) for a 2xx JSON
        answer, else raises GraphError (with the usage headers). The requests exception is
        dropped (``from None``): it holds the prepared request, Authorization header included."""
        if not token:
            raise ValueError("token is empty")
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        params = None
        if self._app_secret:
            params = {"appsecret_proof": appsecret_proof(self._app_secret, token)}
        try:
            response = self.session.request(
                method,
                self.url(path),
                data=payload,
                headers=headers,
                params=params,
                timeout=self.timeout,
            )
            content = response.content
        except requests.Timeout:
            raise GraphError(f"timed out after {self.timeout:g}s", network=True) from None
        except requests.ConnectionError as exc:
            reason = _connection_reason(exc)
            raise GraphError(f"connection failed: {reason}", network=True).redact(token) from None
        except requests.exceptions.ChunkedEncodingError as exc:
            reason = _connection_reason(exc)
            raise GraphError(f"answer cut off: {reason}", network=True).redact(token) from None
        status = response.status_code
        usage = Usage.from_headers(response.headers)
        try:
            body = json.loads(content) if content else None
        except ValueError:
            body = None
        if 200 <= status < 300 and isinstance(body, dict):
            return status, body, usage
        text = content.decode("utf-8", "replace")
        if body is not None and not isinstance(body, dict):
            body = {}  # JSON, but not an object: "without Meta's error envelope"
        err = GraphError.from_response(status, body, text)
        if err.fbtrace_id is None:
            err.fbtrace_id = response.headers.get("x-fb-trace-id")
        err.usage = usage
        raise err.redact(token)
