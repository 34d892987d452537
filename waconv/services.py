"""What one app or CLI run holds: settings, database, rules, and the Graph client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import current_app

from waconv.config import Settings
from waconv.db import Database

if TYPE_CHECKING:
    from waconv.graph.client import GraphClient
    from waconv.rules import RuleSet


@dataclass
class Services:
    settings: Settings
    db: Database
    rules: RuleSet
    _graph: GraphClient | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        from waconv.rules import load_rules

        db = Database(settings.database_url, pool_size=settings.db_pool_size)
        return cls(settings=settings, db=db, rules=load_rules(settings.rules_file))

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
        self.db.dispose()


def current_services() -> Services:
    services: Services = current_app.extensions["waconv"]
    return services
