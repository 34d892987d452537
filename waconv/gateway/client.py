"""A small Conversions API Gateway client: ``POST {gateway_url}/capi/{dataset_id}/events``.

The Gateway takes the same events as the Graph API, in ``{"accessKey": KEY, "data": [...]}``,
and answers ``202`` (or ``200``) when it accepted them. The key travels in the body only,
never in a URL, and is redacted from every text the client raises.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import orjson
import requests

from waconv.graph.client import MAX_EVENTS, MAX_REQUEST_BYTES, _connection_reason, _session_for

MAX_WORDS = 300  # of the Gateway's answer, kept for the operator
ACCEPTED = frozenset({200, 202})


class GatewayError(Exception):
    """A request the Gateway did not accept: its HTTP status (None for a network failure) and
    its words."""

    def __init__(
        self, message: str, *, http_status: int | None = None, too_large: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        # Over the byte cap (never sent) or answered 413: a smaller request goes through.
        self.too_large = too_large or http_status == 413
        self.request_bytes = 0  # of the request's body, for the request log

    @property
    def network(self) -> bool:
        return self.http_status is None and not self.too_large

    def __str__(self) -> str:
        where = f"HTTP {self.http_status}" if self.http_status is not None else "network error"
        if self.too_large and self.http_status is None:
            where = "not sent"
        return f"Gateway {where}: {self.message}"


def _words(status: int, content: bytes) -> str:
    """What the Gateway said, as one short line: its JSON ``error``/``message`` if any, else
    the text of the body."""
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    said: Any = None
    if isinstance(body, Mapping):
        said = body.get("error") or body.get("message") or body.get("errors")
        if isinstance(said, Mapping):
            said = said.get("message") or said
    if said is None:
        said = re.sub(r"<[^>]*>", " ", content.decode("utf-8", "replace"))
    text = " ".join(str(said).split())
    return text[:MAX_WORDS] or f"HTTP {status} with an empty body"


class GatewayClient:
    """Events to one Gateway; one injected ``requests.Session``, an explicit timeout."""

    def __init__(
        self, base_url: str, *, session: requests.Session | None = None, timeout: float = 30.0
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("the Gateway URL must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_bytes = MAX_REQUEST_BYTES
        self._owns_session = session is None
        self.session = session if session is not None else _session_for(self.base_url)

    def __repr__(self) -> str:
        return f"GatewayClient(base_url={self.base_url!r})"

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def send_events(
        self, dataset_id: str, access_key: str, events: Sequence[Mapping[str, Any]]
    ) -> tuple[int, int]:
        """Post ``events``; the HTTP status and the body's bytes when the Gateway accepted them,
        else GatewayError."""
        if not events:
            raise ValueError("no events to send")
        if len(events) > MAX_EVENTS:
            raise ValueError(f"{len(events)} events in one request; the limit is {MAX_EVENTS}")
        if not access_key:
            raise ValueError("the Gateway access key is empty")
        url = f"{self.base_url}/capi/{quote(str(dataset_id), safe='')}/events"
        payload = orjson.dumps({"accessKey": access_key, "data": events})
        try:
            return self._post(url, payload, access_key, len(events)), len(payload)
        except GatewayError as err:
            err.request_bytes = len(payload)
            raise

    def _post(self, url: str, payload: bytes, access_key: str, count: int) -> int:
        if len(payload) > self.max_bytes:
            raise GatewayError(
                f"{count} events make {len(payload)} bytes, over the cap of {self.max_bytes}",
                too_large=True,
            )
        try:
            response = self.session.post(
                url,
                data=payload,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=self.timeout,
            )
            content = response.content
        except requests.Timeout:
            raise GatewayError(f"timed out after {self.timeout:g}s") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            reason = _connection_reason(exc).replace(access_key, "[redacted]")
            raise GatewayError(f"connection failed: {reason}") from None
        status = response.status_code
        if status in ACCEPTED:
            return status
        words = _words(status, content).replace(access_key, "[redacted]")
        raise GatewayError(words, http_status=status)
