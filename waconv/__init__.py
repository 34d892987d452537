"""waconv: WhatsApp click-to-WhatsApp conversations to Meta Conversions API events."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from waconv.config import Settings, load_settings, require, warn_if_test_events
from waconv.services import Services

log = logging.getLogger(__name__)

# Meta: "Webhook payloads can be up to 3 MB."
MAX_REQUEST_BYTES = 3 * 1024 * 1024


def create_app(
    overrides: Mapping[str, Any] | None = None,
    *,
    settings: Settings | None = None,
    require_secrets: bool = True,
) -> Flask:
    """Build the app: settings, database, rules, blueprints, error handlers. Nothing else."""
    from waconv.admin.views import bp as admin_bp
    from waconv.connectors.views import admin_bp as connectors_admin_bp
    from waconv.connectors.views import bp as connectors_bp
    from waconv.console.views import bp as console_bp
    from waconv.errors import register_error_handlers
    from waconv.health import bp as health_bp
    from waconv.logs import configure_logging
    from waconv.webhooks.views import FrontDoor
    from waconv.webhooks.views import bp as webhooks_bp

    settings = settings or load_settings(overrides=overrides)
    if require_secrets:
        # Without these the webhook cannot tell Meta from a forger.
        require(settings, "verify_token", "app_secret")
    configure_logging(settings)
    warn_if_test_events(settings)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    services = app.extensions["waconv"] = Services.build(settings)
    if settings.webhook_processing == "background":
        from waconv.webhooks import processor

        @app.before_request
        def _start_processor() -> None:
            # On the first request each process serves: after gunicorn's fork, not before.
            processor.ensure_running(services)

    app.register_blueprint(webhooks_bp)
    app.wsgi_app = FrontDoor(app.wsgi_app, services, MAX_REQUEST_BYTES)  # type: ignore[method-assign]
    app.register_blueprint(health_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(connectors_bp)
    app.register_blueprint(connectors_admin_bp)
    app.register_blueprint(console_bp)
    register_error_handlers(app)
    return app
