"""What one app or CLI run holds: settings, database, rules, and the clients of the
destinations (the Graph API, Conversions API Gateways)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import current_app

from waconv.config import Settings
from waconv.db import DEFERRED_AUTOCHECKPOINT_PAGES, SQLITE_AUTOCHECKPOINT_PAGES, Database

if TYPE_CHECKING:
    from waconv.gateway.client import GatewayClient
    from waconv.graph.client import GraphClient
    from waconv.rules import RuleSet

log = logging.getLogger(__name__)
_gateways_lock = threading.Lock()


@dataclass
class Services:
    settings: Settings
    db: Database
    rules: RuleSet
    _graph: GraphClient | None = field(default=None, repr=False)
    # One client per Gateway URL (accounts may each have their own Gateway).
    _gateways: dict[str, GatewayClient] = field(default_factory=dict, repr=False)
    # This process's webhook processor thread (background mode), see waconv.webhooks.processor.
    _processor: Any = field(default=None, repr=False)
    # What close() runs first, newest first: whoever starts something here says how to stop it.
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)
    # WABA ids found registered: webhook processing inserts each once per process.
    known_accounts: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        rules = _load_rules(settings)
        # The background processor checkpoints SQLite's WAL; commits only do it without one.
        deferred = settings.webhook_processing == "background"
        db = Database(
            settings.database_url,
            pool_size=settings.db_pool_size,
            # A dispatcher's concurrent account turns (and their sender and recorder threads)
            # each hold a connection for a moment.
            max_overflow=max(settings.db_pool_size, 2 * settings.dispatch_concurrency),
            autocheckpoint=(
                DEFERRED_AUTOCHECKPOINT_PAGES if deferred else SQLITE_AUTOCHECKPOINT_PAGES
            ),
        )
        if settings.send_customer_info:
            from waconv.customers.store import SEND_CUSTOMER_INFO

            db.sessions.configure(info={SEND_CUSTOMER_INFO: True})
        return cls(settings=settings, db=db, rules=rules)

    @property
    def graph(self) -> GraphClient:
        if self._graph is None:
            from waconv.graph.client import GraphClient

            s = self.settings
            self._graph = GraphClient(
                s.graph_url,
                s.graph_version,
                timeout=s.graph_timeout_seconds,
                app_secret=s.app_secret if s.appsecret_proof else None,
            )
        return self._graph

    def gateway(self, url: str) -> GatewayClient:
        """The client of the Conversions API Gateway at ``url``."""
        with _gateways_lock:  # account turns run in threads
            client = self._gateways.get(url)
            if client is None:
                from waconv.gateway.client import GatewayClient

                client = GatewayClient(url, timeout=self.settings.graph_timeout_seconds)
                self._gateways[url] = client
        return client

    def on_close(self, closer: Callable[[], None]) -> None:
        """Run ``closer`` when these services close (before the database goes)."""
        self._closers.append(closer)

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()
        for client in self._gateways.values():
            client.close()
        self._gateways.clear()
        if self._graph is not None:
            self._graph.close()
            self._graph = None
        self.db.dispose()


def _load_rules(settings: Settings) -> RuleSet:
    """The rules file; a file named explicitly must exist, the default one may be absent."""
    from pathlib import Path

    from waconv.config import Settings as Defaults
    from waconv.rules import RuleSet, load_rules

    if settings.rules_file == Defaults.rules_file and not Path(settings.rules_file).exists():
        log.warning(
            "rules.missing: %s not found (started outside the project directory?); no rule "
            "will fire until WACONV_RULES_FILE names a rules file",
            settings.rules_file,
        )
        return RuleSet.empty()
    return load_rules(settings.rules_file)


def current_services() -> Services:
    services: Services = current_app.extensions["waconv"]
    return services
