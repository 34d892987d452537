"""What one app or CLI run holds: settings, database, rules, and the Graph client."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import current_app

from waconv.config import Settings
from waconv.db import DEFERRED_AUTOCHECKPOINT_PAGES, SQLITE_AUTOCHECKPOINT_PAGES, Database

if TYPE_CHECKING:
    from waconv.graph.client import GraphClient
    from waconv.rules import RuleSet

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    db: Database
    rules: RuleSet
    _graph: GraphClient | None = field(default=None, repr=False)
    # This process's webhook processor thread (background mode), see waconv.webhooks.processor.
    _processor: Any = field(default=None, repr=False)
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

    def close(self) -> None:
        if self._processor is not None:
            from waconv.webhooks import processor

            processor.stop(self)
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
