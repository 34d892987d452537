"""Meta's webhook: verify, then parse, then persist, then answer."""

from __future__ import annotations

import hmac
import io
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Blueprint, Response, request
from werkzeug.http import HTTP_STATUS_CODES

from waconv.metrics import WEBHOOK_DELIVERIES, WEBHOOK_SECONDS
from waconv.outage import database_errors, unavailable
from waconv.services import Services, current_services
from waconv.webhooks import ingest, processor, signature

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)


@bp.get("/webhook")
def verify() -> Response:
    settings = current_services().settings
    mode = request.args.get("hub.mode", "")
    token = request.args.get("hub.verify_token", "")
    challenge = request.args.get("hub.challenge", "")
    if (
        mode == "subscribe"
        and challenge  # Meta always sends one; without it there is nothing to answer
        and settings.verify_token
        and hmac.compare_digest(token.encode(), settings.verify_token.encode())
    ):
        log.info("webhook.verify.ok")
        return Response(challenge, status=200, mimetype="text/plain")
    log.warning("webhook.verify.refused mode=%r", mode)
    return Response("verification failed\n", status=403, mimetype="text/plain")


@dataclass(frozen=True)
class Answer:
    """What ``POST /webhook`` answers: a status and a JSON body."""

    status: int
    body: str
    headers: tuple[tuple[str, str], ...] = ()


def _reject(status: int, outcome: str, message: str) -> Answer:
    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()
    log.warning("webhook.delivery.%s %s", outcome, message)
    return Answer(status, json.dumps({"error": {"code": outcome, "message": message}}))


# The answers' counters, resolved once: the hot path's label lookup cost more than the count.
_COUNTED = {outcome: WEBHOOK_DELIVERIES.labels(outcome=outcome) for outcome in ingest.OUTCOMES}


def handle(services: Services, raw: bytes, header: str | None) -> Answer:
    """The whole of ``POST /webhook`` from its raw body and its ``X-Hub-Signature-256``:
    verify, then parse, then persist, then answer. Served by the blueprint's view and, for
    a body of known length, by ``FrontDoor`` before Flask's routing."""
    started = time.perf_counter()
    if not services.settings.app_secret:
        return _reject(503, "no_app_secret", "WACONV_APP_SECRET is not set; nothing accepted")
    if not header:
        return _reject(401, "missing_signature", "X-Hub-Signature-256 header is missing")
    if not signature.is_valid(services.settings.app_secret, raw, header):
        return _reject(403, "bad_signature", "X-Hub-Signature-256 does not match the body")
    try:
        payload = ingest.parse_body(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        return _reject(400, "bad_json", "body is not JSON")
    if not isinstance(payload, dict):
        return _reject(400, "bad_json", "body is not a JSON object")

    errors = database_errors(services.db)
    try:
        result = ingest.receive(services, raw, payload)
    except errors:
        # A pooled connection broken by a database restart was discarded: once more on a new one.
        try:
            result = ingest.receive(services, raw, payload)
        except errors as exc:
            refusal = unavailable(services.db, exc)
            answer = _reject(503, refusal.code, refusal.message)
            return Answer(answer.status, answer.body, tuple(refusal.headers.items()))
    if result.outcome == "stored" and services.settings.webhook_processing == "background":
        processor.wake(services)
    _COUNTED[result.outcome].inc()
    WEBHOOK_SECONDS.observe(time.perf_counter() - started)
    # Formatted by hand: the hot path's answer, two known fields (jsonify cost 5 % of it).
    delivery_id = "null" if result.delivery_id is None else str(int(result.delivery_id))
    return Answer(200, f'{{"status":"{result.outcome}","delivery_id":{delivery_id}}}\n')


@bp.post("/webhook")
def receive() -> Response:
    answer = handle(
        current_services(),
        request.get_data(cache=False),  # bounded by MAX_CONTENT_LENGTH (413 beyond 3 MiB)
        request.headers.get("X-Hub-Signature-256"),
    )
    return Response(
        answer.body, status=answer.status, headers=answer.headers, mimetype="application/json"
    )


class FrontDoor:
    """WSGI middleware: answers ``POST /webhook`` before Flask's routing, the rest goes on.

    Meta's deliveries are nearly all of the traffic, and Flask's request machinery (routing,
    the request and response objects, the hooks and signals) cost more CPU than the whole
    of ``handle()`` without its insert (measured: 0.19 of 0.40 ms per delivery on SQLite).
    Only a body within the 3 MiB limit is taken here (a chunked one once read and measured),
    and only an answer is given here: anything else (a body over the limit, an exception) goes
    to the blueprint's view with the body put back, so every status and error answer stays
    Flask's, and a store that failed once (a connection broken by a database restart) is
    tried once more there before a 500.
    """

    PATH = "/webhook"

    def __init__(self, app: WSGIApplication, services: Services, max_bytes: int) -> None:
        self.app = app
        self.services = services
        self.max_bytes = max_bytes

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != self.PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        length = environ.get("CONTENT_LENGTH", "")
        if not length and environ.get("wsgi.input_terminated"):
            length = self._measure_streamed_body(environ)
        # isascii: "²" is a digit to str.isdigit, and int() refuses it.
        if not (length.isascii() and length.isdigit()) or int(length) > self.max_bytes:
            return self.app(environ, start_response)
        size = int(length)
        raw = environ["wsgi.input"].read(size)
        if len(raw) == size:  # else the client left: werkzeug says so
            try:
                answer = handle(self.services, raw, environ.get("HTTP_X_HUB_SIGNATURE_256"))
            except Exception as exc:  # the view tries again, and answers a 500 if it fails too
                log.warning("webhook.delivery.retrying in the view after %s", type(exc).__name__)
            else:
                body = answer.body.encode()
                headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
                headers.extend(answer.headers)
                start_response(_STATUS_LINES[answer.status], headers)
                return [body]
        environ["wsgi.input"] = io.BytesIO(raw)
        return self.app(environ, start_response)

    def _measure_streamed_body(self, environ: WSGIEnvironment) -> str:
        """A body with no Content-Length (chunked), read up to one byte past the limit and put
        back with its length: from here on it is a body of known length, answered here or,
        past the limit, a 413 from Flask. Left to Flask as it came, it would be cut at the
        limit without a word, and its signature would fail (a 403 for a 413)."""
        stream = environ["wsgi.input"]
        parts: list[bytes] = []
        size, wanted = 0, self.max_bytes + 1
        while size < wanted:
            part = stream.read(wanted - size)
            if not part:
                break
            parts.append(part)
            size += len(part)
        environ["wsgi.input"] = io.BytesIO(b"".join(parts))
        environ["CONTENT_LENGTH"] = str(size)
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        del environ["wsgi.input_terminated"]
        return str(size)


# As werkzeug words them, so that both ways of answering are alike to the byte.
_STATUS_LINES = {code: f"{code} {phrase.upper()}" for code, phrase in HTTP_STATUS_CODES.items()}
