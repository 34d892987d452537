"""Fixtures of the account tests: the ``waconv`` CLI run in-process against the test database
and the fake Graph API, plus helpers to read back what the database holds."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import MetaData, select

from tests.conftest import ACCESS_TOKEN, SECRET_KEY
from waconv.cli import main
from waconv.db import make_engine
from waconv.graph import fake as fake_module
from waconv.graph.fake import FakeGraph
from waconv.services import Services


@dataclass
class Cli:
    """``waconv ...`` in-process, with the environment the test set up."""

    runner: CliRunner

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(main, list(args), input=input, catch_exceptions=False)

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self(*args, input=input)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result

    def fails(self, *args: str, input: str | None = None) -> str:
        """Run a command that must exit 1 with one line on stderr; return that line."""
        result = self(*args, input=input)
        assert result.exit_code == 1, (result.stdout, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        return lines[0]

    def accounts(self) -> dict[str, dict[str, Any]]:
        rows = json.loads(self.ok("accounts", "list", "--json").stdout)
        return {row["waba_id"]: row for row in rows}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures the root logger; leave it as the test found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    filters = {h: list(h.filters) for h in handlers}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for handler, kept in filters.items():
        handler.filters[:] = kept


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch,
    db_url: str,
    fake_graph: FakeGraph,
    rules_path: Path,
    tmp_path: Path,
) -> pytest.MonkeyPatch:
    """A clean WACONV_* environment pointing at the test database and the fake; the working
    directory has no instance/dev-secrets.json."""
    import os

    for name in list(os.environ):
        if name.startswith("WACONV_") and name != "WACONV_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WACONV_DATABASE_URL", db_url)
    monkeypatch.setenv("WACONV_GRAPH_URL", fake_graph.url)
    monkeypatch.setenv("WACONV_ACCESS_TOKEN", ACCESS_TOKEN)
    monkeypatch.setenv("WACONV_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("WACONV_RULES_FILE", str(rules_path))
    monkeypatch.setenv("WACONV_GRAPH_TIMEOUT_SECONDS", "5")
    return monkeypatch


@pytest.fixture
def cli(cli_env: pytest.MonkeyPatch) -> Cli:
    return Cli(CliRunner())


@pytest.fixture
def close_graph(services: Services) -> Iterator[Services]:
    """The app's services, with their Graph client's connections closed after the test."""
    yield services
    services.graph.close()


def fail_edge(
    monkeypatch: pytest.MonkeyPatch,
    fake: FakeGraph,
    edge: str,
    *,
    status: int,
    code: int,
    message: str,
    subcode: int | None = None,
) -> Callable[[], None]:
    """Make the fake answer every call to ``/{id}/{edge}`` with this Meta error (its faults
    only apply to events requests); returns a function that heals it."""
    route = fake._route
    failing_now = [True]

    def failing(method: str, parts: list[str], *args: Any) -> Any:
        if failing_now[0] and len(parts) == 3 and parts[2] == edge:
            return fake_module._error(status, code, message, subcode=subcode)
        return route(method, parts, *args)

    monkeypatch.setattr(fake, "_route", failing)

    def heal() -> None:
        failing_now[0] = False

    return heal


def database_text(db_url: str) -> str:
    """Every value of every column of every table (alembic's included), as text."""
    engine = make_engine(db_url)
    meta = MetaData()
    meta.reflect(engine)
    parts: list[str] = []
    try:
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                for row in conn.execute(select(table)):
                    for value in row:
                        if isinstance(value, bytes | bytearray | memoryview):
                            parts.append(bytes(value).decode("latin-1"))
                        else:
                            parts.append(repr(value))
    finally:
        engine.dispose()
    return "\n".join(parts)


def database_files(db_url: str) -> bytes:
    """The raw bytes of a SQLite database and its WAL; empty for other backends."""
    if not db_url.startswith("sqlite:///"):
        return b""
    path = Path(db_url.split(":///", 1)[1])
    data = b""
    for suffix in ("", "-wal", "-journal"):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            data += candidate.read_bytes()
    return data
