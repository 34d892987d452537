"""waconv's FakeGraph in a process of its own, for the dispatch benchmark.

``python -m bench.fakegraph`` starts it on loopback, prints one JSON line (``url``, ``dataset_id``)
and then answers commands on stdin, one a line: ``stats`` (a JSON line: events accepted, distinct
event ids, the most often one was accepted, requests by status, the CPU seconds the process has
used) and ``quit``.

A process of its own, so the fake's JSON parsing and validation of 1,000-event batches does not
share a GIL with the sender being measured; every contender sends to the same kind of process.

``MetaFormFakeGraph`` adds what Meta accepts and waconv's fake does not: the Graph API takes
``application/x-www-form-urlencoded`` posts whose ``data`` parameter is a JSON array (of objects
or of JSON strings), and the token as the ``access_token`` parameter. That is how Meta's
facebook-business SDK sends events; the adapter turns such a request into the JSON body and
``Authorization`` header the fake expects, then lets the fake answer as usual.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from waconv.graph.fake import FakeGraph, _Handler

WABA_ID = "102290129340398"


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


class MetaFormFakeGraph(FakeGraph):
    def _serve(self, handler: _Handler, method: str) -> None:
        split = urlsplit(handler.path)
        query = parse_qsl(split.query)
        token = next((v for k, v in query if k == "access_token"), None)
        if token is not None and "Authorization" not in handler.headers:
            handler.headers["Authorization"] = f"Bearer {token}"
            rest = urlencode([(k, v) for k, v in query if k != "access_token"])
            handler.path = urlunsplit(split._replace(query=rest))
        content_type = handler.headers.get("Content-Type", "")
        if method == "POST" and content_type.startswith("application/x-www-form-urlencoded"):
            length = int(handler.headers.get("Content-Length") or 0)
            form = parse_qsl(handler.rfile.read(length).decode(), keep_blank_values=True)
            body: dict[str, Any] = {}
            for key, value in form:
                if key == "access_token":
                    handler.headers["Authorization"] = f"Bearer {value}"
                    continue
                decoded = _decode(value)
                if key == "data" and isinstance(decoded, list):
                    decoded = [_decode(e) if isinstance(e, str) else e for e in decoded]
                body[key] = decoded
            raw = json.dumps(body).encode()
            del handler.headers["Content-Type"]
            del handler.headers["Content-Length"]
            handler.headers["Content-Type"] = "application/json"
            handler.headers["Content-Length"] = str(len(raw))
            connection_rfile = handler.rfile
            handler.rfile = io.BufferedReader(io.BytesIO(raw))
            try:
                super()._serve(handler, method)
            finally:
                handler.rfile = connection_rfile  # the next keep-alive request comes from here
            return
        super()._serve(handler, method)


def stats(fake: FakeGraph) -> dict[str, Any]:
    cpu = time.process_time()  # before counting what was accepted, which takes CPU too
    accepted = fake.accepted_event_ids()
    with fake.lock:
        statuses = Counter(str(r["status"]) for r in fake.requests)
    return {
        "events": sum(accepted.values()),
        "distinct": len(accepted),
        "max_per_id": max(accepted.values(), default=0),
        "requests": dict(statuses),
        "cpu_s": cpu,
    }


def main() -> None:
    fake = MetaFormFakeGraph()
    fake.start()
    dataset_id = fake.add_dataset(WABA_ID)
    print(json.dumps({"url": fake.url, "dataset_id": dataset_id}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "stats":
            print(json.dumps(stats(fake)), flush=True)
        elif command == "quit":
            break
    fake.stop()


if __name__ == "__main__":
    main()
