"""Helpers of the webhook and conversation tests: row counts and a real threaded server."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from flask import Flask
from sqlalchemy import func, select
from werkzeug.serving import WSGIRequestHandler, make_server

from waconv.services import Services


def count(services: Services, model: Any, *where: Any) -> int:
    with services.db.transaction() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def rows(services: Services, model: Any, *where: Any) -> list[Any]:
    with services.db.transaction() as session:
        return list(session.scalars(select(model).where(*where).order_by(model.id)))


def one(services: Services, model: Any, *where: Any) -> Any:
    found = rows(services, model, *where)
    assert len(found) == 1, found
    return found[0]


SERVE_POLL_SECONDS = 0.02


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@contextlib.contextmanager
def live_server(
    app: Flask, request_handler: type[WSGIRequestHandler] = _QuietHandler
) -> Iterator[str]:
    """The app behind a real threaded HTTP server on a free loopback port."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=request_handler)
    thread = threading.Thread(
        target=server.serve_forever,
        # shutdown() waits for the next poll: werkzeug's default 0.5 s cost ~0.25 s a server.
        kwargs={"poll_interval": SERVE_POLL_SECONDS},
        name="live-server",
        daemon=True,
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
