"""``waconv serve`` / ``make run``: the app and a dispatcher thread, for development."""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

import click
from werkzeug.serving import WSGIRequestHandler, make_server

from waconv import create_app
from waconv.config import DEV_SECRETS_FILE, ensure_dev_secrets, load_settings
from waconv.logs import loggable_path

log = logging.getLogger(__name__)


class PathOnlyRequestHandler(WSGIRequestHandler):
    """Request logs without the query string (the handshake carries the verify token there)
    or a user id."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.log("info", '"%s %s" %s %s', self.command, loggable_path(self.path), code, size)


def _dev_secrets_banner(env: dict[str, str]) -> None:
    needed = ("WACONV_VERIFY_TOKEN", "WACONV_APP_SECRET", "WACONV_SECRET_KEY")
    if all(env.get(name) for name in needed):
        return
    secrets, generated = ensure_dev_secrets()
    if not generated:  # printed when generated; later runs point at the file instead
        click.echo(f"Using development secrets from {DEV_SECRETS_FILE}")
        return
    click.echo(f"Generated development secrets into {DEV_SECRETS_FILE} (kept for next runs):")
    if "verify_token" in generated and not env.get("WACONV_VERIFY_TOKEN"):
        click.echo(f"  verify token (Meta dashboard > Webhooks): {secrets['verify_token']}")
    if "app_secret" in generated and not env.get("WACONV_APP_SECRET"):
        click.echo(f"  app secret (signs test deliveries):     {secrets['app_secret']}")


def run_dev_server(*, host: str | None, port: int | None, dispatcher: bool) -> None:
    host = host or os.environ.get("HOST") or "127.0.0.1"
    port = port or int(os.environ.get("PORT") or 8000)
    _dev_secrets_banner(dict(os.environ))
    settings = load_settings()
    app = create_app(settings=settings)
    services = app.extensions["waconv"]
    click.echo(f"Webhook URL: http://{host}:{port}/webhook (Meta needs it behind public HTTPS)")
    if not settings.admin_token:
        click.echo("Admin API off: set WACONV_ADMIN_TOKEN to enable /admin/*")

    stop = threading.Event()
    worker: threading.Thread | None = None
    if dispatcher:
        from waconv.accounts import registry
        from waconv.conversions.dispatcher import Dispatcher

        with services.db.transaction() as session:
            registry.probe_paused_now(session)
        loop = Dispatcher(services)
        worker = threading.Thread(
            target=loop.run_forever, args=(stop,), name="dispatcher", daemon=True
        )
        worker.start()
        click.echo("Dispatcher running beside the app")

    server = make_server(host, port, app, threaded=True, request_handler=PathOnlyRequestHandler)

    def _shutdown(signum: int, frame: FrameType | None) -> Any:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _shutdown)
    click.echo(f"Serving on http://{host}:{port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        if worker is not None:
            worker.join(timeout=30)
        server.server_close()
        services.close()  # stops the processor too: its child finishes its transaction
