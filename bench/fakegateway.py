"""waconv's FakeGateway in a process of its own, for the dispatch benchmark's Gateway row.

``python -m bench.fakegateway`` prints one JSON line (``url``, ``dataset_id``, ``access_key``)
and answers ``stats`` and ``quit`` on stdin, as bench/fakegraph.py does.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Any

from waconv.gateway.fake import FakeGateway

DATASET_ID = "987654321012345"
ACCESS_KEY = "bench-gateway-key"


def stats(fake: FakeGateway) -> dict[str, Any]:
    cpu = time.process_time()
    accepted = fake.accepted_event_ids()
    with fake.lock:
        requests = Counter(r["path"] for r in fake.requests)
    return {
        "events": sum(accepted.values()),
        "distinct": len(accepted),
        "max_per_id": max(accepted.values(), default=0),
        "requests": dict(requests),
        "cpu_s": cpu,
    }


def main() -> None:
    fake = FakeGateway(access_key=ACCESS_KEY).start()
    hello = {"url": fake.url, "dataset_id": DATASET_ID, "access_key": ACCESS_KEY}
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "stats":
            print(json.dumps(stats(fake)), flush=True)
        elif command == "quit":
            break
    fake.stop()


if __name__ == "__main__":
    main()
