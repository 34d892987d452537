"""Settings: defaults, then ``WACONV_*`` environment, then explicit overrides; validated once.

Nothing here runs at import time. ``load_settings()`` is called by ``create_app()`` and by the
CLI, and every error names the variable the operator has to fix.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite:///instance/waconv.sqlite3"
DEV_SECRETS_FILE = Path("instance") / "dev-secrets.json"
# Secrets `make run` generates for a fresh clone; production sets them in the environment.
_DEV_SECRET_MAKERS = {
    "verify_token": lambda: secrets.token_urlsafe(24),
    "app_secret": lambda: secrets.token_hex(16),
    "secret_key": lambda: secrets.token_urlsafe(32),
}
DEV_SECRET_NAMES = tuple(_DEV_SECRET_MAKERS)


MAX_LEASE_SECONDS = 60  # the contract: leased events of a dead dispatcher due within 60 s
# Before each Graph request a dispatcher makes its lease outlast the request's timeout by this
# much (waconv.conversions.dispatcher): a timeout longer than the lease's maximum less this
# would stretch a lease past 60 s, and a dead dispatcher's events would wait longer.
LEASE_SLACK_SECONDS = 5
MAX_GRAPH_TIMEOUT_SECONDS = MAX_LEASE_SECONDS - LEASE_SLACK_SECONDS
# Requests one dispatcher keeps in flight at most (each HTTP client pools this many
# connections per host).
MAX_DISPATCH_CONCURRENCY = 64
WEBHOOK_PROCESSING_MODES = ("background", "inline")
DESTINATIONS = ("graph", "gateway", "both")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    verify_token: str = field(default="", repr=False)
    app_secret: str = field(default="", repr=False)
    access_token: str = field(default="", repr=False)
    waba_id: str = ""
    # The number that receives On-Premises-shaped deliveries (they name no number themselves).
    phone_number_id: str = ""
    dataset_id: str = ""
    graph_url: str = "https://graph.facebook.com"
    graph_version: str = "v26.0"
    secret_key: str = field(default="", repr=False)
    admin_token: str = field(default="", repr=False)
    partner_agent: str = ""
    test_event_code: str = ""
    rules_file: str = "config/rules.toml"
    retry_base_seconds: float = 5.0
    # How long a dispatcher's claim on events lasts; a dispatcher that died lets them go after
    # this. The contract promises "within 60 seconds".
    lease_seconds: float = 60.0
    # Meta answers most event posts in < 600 ms; a 1,000-event batch can take longer.
    graph_timeout_seconds: float = 30.0
    # Send appsecret_proof (HMAC of the token with the app secret) on Graph calls.
    appsecret_proof: bool = False
    # Limited Data Use for accounts that do not set their own.
    ldu: bool = False
    ldu_country: int = 0
    ldu_state: int = 0
    # "background": the request stores the delivery and a thread of the same process applies it
    # a moment later (fast answers to Meta); "inline": applied before the 200.
    webhook_processing: str = "background"
    # Raw webhook bodies and message texts older than this are removed by `waconv prune`.
    retention_days: int = 30
    db_pool_size: int = 5
    log_level: str = "INFO"
    # Conversions that close outside the chat (waconv.connectors): the key of Shopify's
    # X-Shopify-Hmac-Sha256, and the Standard Webhooks secret (whsec_...) of /connectors/events.
    shopify_secret: str = field(default="", repr=False)
    connector_secret: str = field(default="", repr=False)
    # Hashed customer information (ph, em, ...) in user_data; off unless the business opts in.
    send_customer_info: bool = False
    # The region of phone numbers written without a country code (ISO 3166-1 alpha-2, e.g. US).
    default_phone_region: str = ""
    # Requests one dispatcher keeps in flight, each for a different account.
    dispatch_concurrency: int = 16
    # Where accounts without a destination of their own send (waconv.conversions.destinations).
    destination: str = "graph"
    gateway_url: str = ""
    gateway_access_key: str = field(default="", repr=False)
    # Comma-separated event names; when set, only these go to the Gateway.
    gateway_events: str = ""
    # Where the secrets came from, for the start-up banner; never the values.
    dev_secrets: tuple[str, ...] = field(default=())

    def redacted(self) -> dict[str, Any]:
        """The settings as an operator may see them: secrets replaced by set/unset."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS:
                value = "(set)" if value else "(unset)"
            out[f.name] = value
        return out


SECRET_FIELDS = frozenset(
    {
        "verify_token",
        "app_secret",
        "access_token",
        "secret_key",
        "admin_token",
        "shopify_secret",
        "connector_secret",
        "gateway_access_key",
    }
)

_ENV: dict[str, tuple[str, type]] = {
    "WACONV_DATABASE_URL": ("database_url", str),
    "WACONV_VERIFY_TOKEN": ("verify_token", str),
    "WACONV_APP_SECRET": ("app_secret", str),
    "WACONV_ACCESS_TOKEN": ("access_token", str),
    "WACONV_WABA_ID": ("waba_id", str),
    "WACONV_PHONE_NUMBER_ID": ("phone_number_id", str),
    "WACONV_DATASET_ID": ("dataset_id", str),
    "WACONV_GRAPH_URL": ("graph_url", str),
    "WACONV_GRAPH_VERSION": ("graph_version", str),
    "WACONV_SECRET_KEY": ("secret_key", str),
    "WACONV_ADMIN_TOKEN": ("admin_token", str),
    "WACONV_PARTNER_AGENT": ("partner_agent", str),
    "WACONV_TEST_EVENT_CODE": ("test_event_code", str),
    "WACONV_RULES_FILE": ("rules_file", str),
    "WACONV_RETRY_BASE_SECONDS": ("retry_base_seconds", float),
    "WACONV_GRAPH_TIMEOUT_SECONDS": ("graph_timeout_seconds", float),
    "WACONV_LEASE_SECONDS": ("lease_seconds", float),
    "WACONV_APPSECRET_PROOF": ("appsecret_proof", bool),
    "WACONV_LDU": ("ldu", bool),
    "WACONV_LDU_COUNTRY": ("ldu_country", int),
    "WACONV_LDU_STATE": ("ldu_state", int),
    "WACONV_WEBHOOK_PROCESSING": ("webhook_processing", str),
    "WACONV_RETENTION_DAYS": ("retention_days", int),
    "WACONV_DB_POOL_SIZE": ("db_pool_size", int),
    "WACONV_LOG_LEVEL": ("log_level", str),
    "WACONV_SHOPIFY_SECRET": ("shopify_secret", str),
    "WACONV_CONNECTOR_SECRET": ("connector_secret", str),
    "WACONV_SEND_CUSTOMER_INFO": ("send_customer_info", bool),
    "WACONV_DEFAULT_PHONE_REGION": ("default_phone_region", str),
    "WACONV_DISPATCH_CONCURRENCY": ("dispatch_concurrency", int),
    "WACONV_DESTINATION": ("destination", str),
    "WACONV_GATEWAY_URL": ("gateway_url", str),
    "WACONV_GATEWAY_ACCESS_KEY": ("gateway_access_key", str),
    "WACONV_GATEWAY_EVENTS": ("gateway_events", str),
}
_FIELD_TO_ENV = {name: var for var, (name, _) in _ENV.items()}


def env_name(field_name: str) -> str:
    return _FIELD_TO_ENV.get(field_name, field_name)


def _convert(var: str, raw: str, kind: type) -> Any:
    raw = raw.strip()
    if kind is str:
        return raw
    if kind is bool:
        lowered = raw.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigError(f"{var} must be true or false, not {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a {kind.__name__}, not {raw!r}") from None


def load_settings(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    dev_secrets_file: Path | None = None,
) -> Settings:
    """Build and validate the settings.

    Secrets missing from the environment are taken from ``instance/dev-secrets.json`` when that
    file exists (written by ``waconv serve`` on a fresh clone), so ``gunicorn wsgi:app`` run
    after ``make run`` works locally too.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for var, (name, kind) in _ENV.items():
        if var in environ and environ[var].strip() != "":
            values[name] = _convert(var, environ[var], kind)
    dev_file = DEV_SECRETS_FILE if dev_secrets_file is None else dev_secrets_file
    from_dev: list[str] = []
    if dev_file.exists():
        stored = json.loads(dev_file.read_text())
        for name in DEV_SECRET_NAMES:
            if not values.get(name) and stored.get(name):
                values[name] = stored[name]
                from_dev.append(name)
    values["dev_secrets"] = tuple(from_dev)
    values.update(overrides or {})
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    if not s.database_url.startswith(("sqlite", "postgresql")):
        raise ConfigError(
            f"WACONV_DATABASE_URL must be a sqlite:/// or postgresql+psycopg:// URL, "
            f"not {s.database_url.split(':', 1)[0]!r}"
        )
    if not s.graph_url.startswith(("http://", "https://")):
        raise ConfigError("WACONV_GRAPH_URL must start with http:// or https://")
    if not (s.graph_version.startswith("v") and s.graph_version[1:].replace(".", "").isdigit()):
        raise ConfigError(f"WACONV_GRAPH_VERSION must look like v26.0, not {s.graph_version!r}")
    if s.retry_base_seconds <= 0:
        raise ConfigError("WACONV_RETRY_BASE_SECONDS must be greater than 0")
    if not 1 <= s.lease_seconds <= MAX_LEASE_SECONDS:
        raise ConfigError(f"WACONV_LEASE_SECONDS must be between 1 and {MAX_LEASE_SECONDS}")
    if not 0 < s.graph_timeout_seconds <= MAX_GRAPH_TIMEOUT_SECONDS:
        raise ConfigError(
            f"WACONV_GRAPH_TIMEOUT_SECONDS must be greater than 0 and at most "
            f"{MAX_GRAPH_TIMEOUT_SECONDS}: a request must fit in a dispatcher's lease of at most "
            f"{MAX_LEASE_SECONDS} s, so that a dead dispatcher's events are due again within it"
        )
    if s.webhook_processing not in WEBHOOK_PROCESSING_MODES:
        raise ConfigError(
            f"WACONV_WEBHOOK_PROCESSING must be background or inline, not {s.webhook_processing!r}"
        )
    if s.retention_days < 1:
        raise ConfigError("WACONV_RETENTION_DAYS must be at least 1")
    if not 1 <= s.dispatch_concurrency <= MAX_DISPATCH_CONCURRENCY:
        raise ConfigError(
            f"WACONV_DISPATCH_CONCURRENCY must be between 1 and {MAX_DISPATCH_CONCURRENCY}"
        )
    if s.destination not in DESTINATIONS:
        raise ConfigError(
            f"WACONV_DESTINATION must be graph, gateway or both, not {s.destination!r}"
        )
    if s.gateway_url and not s.gateway_url.startswith(("http://", "https://")):
        raise ConfigError("WACONV_GATEWAY_URL must start with http:// or https://")
    event_names(s.gateway_events, "WACONV_GATEWAY_EVENTS")
    for name in ("waba_id", "phone_number_id", "dataset_id"):
        value = getattr(s, name)
        if value and not value.isdigit():
            raise ConfigError(f"{env_name(name)} must be a numeric Meta id, not {value!r}")
    _validate_connectors(s)


def _validate_connectors(s: Settings) -> None:
    if s.connector_secret:
        from waconv.connectors.signatures import InvalidSecret, standard_webhooks_key

        try:
            standard_webhooks_key(s.connector_secret)
        except InvalidSecret as exc:  # the message never quotes the secret
            raise ConfigError(f"WACONV_CONNECTOR_SECRET {exc}") from None
    if s.default_phone_region:
        from waconv.customers.normalize import known_region

        if not known_region(s.default_phone_region):
            raise ConfigError(
                "WACONV_DEFAULT_PHONE_REGION must be a two-letter region such as US or BR, "
                f"not {s.default_phone_region!r}"
            )


def event_names(text: str | None, where: str) -> frozenset[str] | None:
    """``A,B`` as a set of business-messaging event names; None when ``text`` is empty."""
    from waconv.conversions.events import EVENT_NAMES

    if not text or not text.strip():
        return None
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(names - set(EVENT_NAMES))
    if unknown:
        raise ConfigError(
            f"{where} names unknown events: {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(EVENT_NAMES))})"
        )
    return names


def require(s: Settings, *names: str) -> None:
    """Refuse to go on without these settings (used where a secret is indispensable)."""
    missing = [env_name(n) for n in names if not getattr(s, n)]
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set")


def warn_if_test_events(s: Settings) -> None:
    """At the start of every process that serves or sends (the app, ``waconv dispatch``)."""
    if s.test_event_code:
        log.warning(
            "config.test_event_code: WACONV_TEST_EVENT_CODE is set; Meta counts test events "
            "in Events Manager and for ads measurement, so unset it in production"
        )


def ensure_dev_secrets(path: Path | None = None) -> tuple[dict[str, str], tuple[str, ...]]:
    """The dev secrets (``make run`` on a fresh clone), each generated once: those the file
    has are kept, the missing ones added. Returns them and the names generated by this call,
    which the caller shows (a changed verify token must be put in Meta's dashboard again)."""
    path = DEV_SECRETS_FILE if path is None else path
    stored: dict[str, str] = {}
    if path.exists():
        try:
            read = json.loads(path.read_text())
        except ValueError:
            read = None
        if isinstance(read, dict):
            stored = {k: v for k, v in read.items() if isinstance(v, str)}
    missing = tuple(name for name in DEV_SECRET_NAMES if not stored.get(name))
    if not missing:
        return stored, ()
    merged = {**stored, **{name: _DEV_SECRET_MAKERS[name]() for name in missing}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(merged, fh, indent=2)
    return merged, missing
