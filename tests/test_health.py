"""/healthz, /readyz and /metrics (CONTRACT: HTTP)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests import payloads as p
from tests.conftest import free_port


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json == {"status": "ok"}


def test_readyz_when_the_database_answers(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json["status"] == "ok"


def test_readyz_is_503_when_postgresql_is_unreachable(make_app):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
    client = make_app(database_url=url).test_client()
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json["status"] == "unavailable"
    assert client.get("/healthz").status_code == 200  # alive, just not ready


def test_metrics_answer_while_the_database_is_down(make_app):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
    r = make_app(database_url=url).test_client().get("/metrics")
    assert r.status_code == 200
    assert "waconv_database_up 0.0" in r.text
    assert "waconv_webhook_deliveries" in r.text


def test_readyz_is_503_when_sqlite_cannot_be_opened(make_app, tmp_path):
    directory = tmp_path / "a-directory"
    directory.mkdir()
    client = make_app(database_url=f"sqlite:///{directory}").test_client()
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json["status"] == "unavailable"


def _scrape(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.mimetype == "text/plain"
    return {f.name: f for f in text_string_to_metric_families(r.get_data(as_text=True))}


def _deliveries(families: dict, outcome: str) -> float:
    return sum(
        s.value
        for s in families["waconv_webhook_deliveries"].samples
        if s.name == "waconv_webhook_deliveries_total" and s.labels == {"outcome": outcome}
    )


def test_metrics_is_prometheus_text(client, post_webhook):
    before = _scrape(client)
    assert post_webhook(p.delivery(p.text("hi"))).status_code == 200
    client.post("/webhook", data=b"{}", headers={"X-Hub-Signature-256": "sha256=00"})
    after = _scrape(client)
    assert _deliveries(after, "stored") == _deliveries(before, "stored") + 1
    assert _deliveries(after, "bad_signature") == _deliveries(before, "bad_signature") + 1
    assert [s.value for s in after["waconv_outbox_queue_depth"].samples] == [0.0]


def test_readyz_is_503_until_the_database_is_migrated(make_app, tmp_path):
    from waconv.db import make_engine
    from waconv.schema import downgrade, upgrade

    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    client = make_app(database_url=url).test_client()
    r = client.get("/readyz")
    assert r.status_code == 503
    assert "waconv db upgrade" in r.json["reason"]

    engine = make_engine(url)
    try:
        upgrade(engine)
        assert client.get("/readyz").status_code == 200
        downgrade(engine, "-1")  # a code newer than its database
        r = client.get("/readyz")
        assert r.status_code == 503
        assert "this code needs" in r.json["reason"]
    finally:
        engine.dispose()
