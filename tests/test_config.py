from __future__ import annotations

import json

import pytest

from waconv import create_app
from waconv.config import ConfigError, ensure_dev_secrets, load_settings


def settings(env, tmp_path, **overrides):
    return load_settings(environ=env, overrides=overrides, dev_secrets_file=tmp_path / "dev.json")


def test_defaults(tmp_path):
    s = settings({}, tmp_path)
    assert s.database_url == "sqlite:///instance/waconv.sqlite3"
    assert s.graph_url == "https://graph.facebook.com"
    assert s.graph_version == "v26.0"
    assert s.retry_base_seconds == 5.0
    assert s.rules_file == "config/rules.toml"


def test_environment_read(tmp_path):
    s = settings(
        {"WACONV_RETRY_BASE_SECONDS": "0.5", "WACONV_WABA_ID": "123", "WACONV_LDU": "true"},
        tmp_path,
    )
    assert s.retry_base_seconds == 0.5
    assert s.waba_id == "123"
    assert s.ldu is True


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"WACONV_RETRY_BASE_SECONDS": "soon"}, "WACONV_RETRY_BASE_SECONDS"),
        ({"WACONV_RETRY_BASE_SECONDS": "0"}, "WACONV_RETRY_BASE_SECONDS"),
        ({"WACONV_DATABASE_URL": "mysql://x"}, "WACONV_DATABASE_URL"),
        ({"WACONV_GRAPH_URL": "graph.facebook.com"}, "WACONV_GRAPH_URL"),
        ({"WACONV_GRAPH_VERSION": "26"}, "WACONV_GRAPH_VERSION"),
        ({"WACONV_WABA_ID": "abc"}, "WACONV_WABA_ID"),
        ({"WACONV_APPSECRET_PROOF": "maybe"}, "WACONV_APPSECRET_PROOF"),
        ({"WACONV_LEASE_SECONDS": "120"}, "WACONV_LEASE_SECONDS"),
        # A request longer than a lease can be would keep a dead dispatcher's events waiting
        # past the contract's 60 s (its lease is stretched to outlast the request).
        ({"WACONV_GRAPH_TIMEOUT_SECONDS": "120"}, "WACONV_GRAPH_TIMEOUT_SECONDS"),
        ({"WACONV_GRAPH_TIMEOUT_SECONDS": "0"}, "WACONV_GRAPH_TIMEOUT_SECONDS"),
        ({"WACONV_WEBHOOK_PROCESSING": "later"}, "WACONV_WEBHOOK_PROCESSING"),
    ],
)
def test_bad_values_name_the_variable(env, named, tmp_path):
    with pytest.raises(ConfigError, match=named):
        settings(env, tmp_path)


def test_app_refuses_to_start_without_secrets(tmp_path):
    s = settings({"WACONV_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}, tmp_path)
    with pytest.raises(ConfigError, match="WACONV_VERIFY_TOKEN, WACONV_APP_SECRET"):
        create_app(settings=s)


def test_dev_secrets_generated_once_and_used(tmp_path):
    path = tmp_path / "instance" / "dev-secrets.json"
    first, generated = ensure_dev_secrets(path)
    assert generated == ("verify_token", "app_secret", "secret_key")
    assert ensure_dev_secrets(path) == (first, ())
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    s = load_settings(environ={}, dev_secrets_file=path)
    assert s.app_secret == first["app_secret"]
    assert s.dev_secrets == ("verify_token", "app_secret", "secret_key")
    # the environment wins over the file
    s = load_settings(environ={"WACONV_APP_SECRET": "from-env"}, dev_secrets_file=path)
    assert s.app_secret == "from-env"
    assert json.loads(path.read_text())["app_secret"] == first["app_secret"]


def test_dev_secrets_missing_from_the_file_are_added_and_the_others_kept(tmp_path):
    # A file with only some secrets (edited by hand, or older) used to be replaced whole,
    # changing a verify token Meta's dashboard already had, without printing the new one.
    path = tmp_path / "instance" / "dev-secrets.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"verify_token": "mine"}))
    secrets, generated = ensure_dev_secrets(path)
    assert secrets["verify_token"] == "mine"
    assert generated == ("app_secret", "secret_key")
    assert json.loads(path.read_text()) == secrets


def test_redacted_hides_secrets(tmp_path):
    s = settings({"WACONV_ACCESS_TOKEN": "EAAsecretvalue"}, tmp_path)
    assert "EAAsecretvalue" not in repr(s.redacted())
    assert s.redacted()["access_token"] == "(set)"


def test_repr_hides_secrets(tmp_path):
    s = settings(
        {"WACONV_ACCESS_TOKEN": "EAAsecretvalue", "WACONV_APP_SECRET": "appsecret99"}, tmp_path
    )
    assert "EAAsecretvalue" not in repr(s)
    assert "appsecret99" not in repr(s)


def test_a_test_event_code_is_warned_about_at_start(make_app, caplog):
    make_app(test_event_code="TEST12345")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith("config.test_event_code") for m in warnings)
    assert not any("TEST12345" in m for m in warnings)  # says it is set, not what it is


def test_no_warning_without_a_test_event_code(make_app, caplog):
    make_app()
    assert not any("test_event_code" in r.getMessage() for r in caplog.records)


def test_the_dev_server_prints_the_secrets_it_generates_and_only_those(
    tmp_path, monkeypatch, capsys
):
    from waconv.devserver import _dev_secrets_banner

    monkeypatch.chdir(tmp_path)
    _dev_secrets_banner({})
    first = capsys.readouterr().out
    stored = json.loads((tmp_path / "instance" / "dev-secrets.json").read_text())
    assert stored["verify_token"] in first and stored["app_secret"] in first
    assert stored["secret_key"] not in first  # it encrypts tokens; nobody needs to type it

    _dev_secrets_banner({})
    assert capsys.readouterr().out.startswith("Using development secrets from")

    (tmp_path / "instance" / "dev-secrets.json").write_text(json.dumps({"verify_token": "mine"}))
    _dev_secrets_banner({})
    partial = capsys.readouterr().out
    added = json.loads((tmp_path / "instance" / "dev-secrets.json").read_text())
    assert added["app_secret"] in partial
    assert "verify token" not in partial  # kept: the dashboard already has it


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"WACONV_CONNECTOR_SECRET": "whsec_not base64!"}, "WACONV_CONNECTOR_SECRET"),
        ({"WACONV_CONNECTOR_SECRET": "whsec_c2hvcnQ="}, "WACONV_CONNECTOR_SECRET"),
        ({"WACONV_DEFAULT_PHONE_REGION": "USA"}, "WACONV_DEFAULT_PHONE_REGION"),
        ({"WACONV_SEND_CUSTOMER_INFO": "perhaps"}, "WACONV_SEND_CUSTOMER_INFO"),
    ],
)
def test_connector_settings_are_checked_without_quoting_secrets(env, named, tmp_path):
    with pytest.raises(ConfigError, match=named) as raised:
        settings(env, tmp_path)
    if "SECRET" in named:
        assert env[named].removeprefix("whsec_") not in str(raised.value)


def test_connector_settings(tmp_path):
    s = settings(
        {
            "WACONV_SHOPIFY_SECRET": "shpss_plainsecret",
            "WACONV_CONNECTOR_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "WACONV_SEND_CUSTOMER_INFO": "true",
            "WACONV_DEFAULT_PHONE_REGION": "br",
        },
        tmp_path,
    )
    assert s.send_customer_info is True
    assert s.default_phone_region == "br"
    shown = repr(s) + repr(s.redacted())
    assert "shpss_plainsecret" not in shown
    assert "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" not in shown
    assert s.redacted()["connector_secret"] == "(set)"
