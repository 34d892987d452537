"""The console over HTTP (Flask's client): login, the cookie, CSRF, and each page's actions."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time
from sqlalchemy import select, update

from tests import payloads as p
from tests.admin.conftest import Admin
from tests.conftest import ADMIN_TOKEN, PHONE_NUMBER_ID, WABA_ID
from waconv.accounts import registry
from waconv.console import auth
from waconv.conversions import requestlog
from waconv.models import (
    Account,
    ConnectorReceipt,
    Conversation,
    Conversion,
    UserAlias,
    WebhookDelivery,
)
from waconv.services import Services

PAGES = [
    "/console/",
    "/console/ads.csv",
    "/console/conversions",
    "/console/conversions/1",
    "/console/conversations?q=x",
    "/console/conversations/1",
    "/console/accounts",
    "/console/webhooks",
    "/console/orders",
]
ACTIONS = [
    "/console/conversions/1/retry",
    "/console/conversions/1/cancel",
    f"/console/accounts/{WABA_ID}/resume",
    "/console/webhooks/1/replay",
    "/console/logout",
]


def login(client: FlaskClient, token: str = ADMIN_TOKEN) -> Any:
    return client.post("/console/login", data={"token": token})


def csrf_of(client: FlaskClient, path: str = "/console/") -> str:
    page = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


@pytest.fixture
def browser(client: FlaskClient) -> FlaskClient:
    assert login(client).status_code == 302
    return client


@pytest.fixture
def failed(clicked: str, admin: Admin, services: Services) -> int:
    r = admin.mark(
        wa_id=clicked, event_name="Purchase", custom_data={"value": 9, "currency": "USD"}
    )
    conversion_id: int = r.get_json()["id"]
    with services.db.transaction() as session:
        session.execute(
            update(Conversion)
            .where(Conversion.id == conversion_id)
            .values(
                status=Conversion.FAILED,
                attempts=1,
                last_error="Meta refused the event: fix the click id",
                last_error_code=100,
                last_error_subcode=2804003,
                last_error_message="Invalid parameter",
            )
        )
        requestlog.record_request(
            session,
            requestlog.RequestRecord(
                at=datetime(2026, 12, 1, 10, tzinfo=UTC),
                waba_id=WABA_ID,
                destination="graph",
                events=1,
                bytes=420,
                duration_ms=87,
                http_status=400,
                fbtrace_id="AbCdEfGhIjK",
                error_code=100,
                error_subcode=2804003,
                error_message="Invalid parameter",
            ),
            [conversion_id],
        )
    return conversion_id


def status_of(services: Services, conversion_id: int) -> str:
    with services.db.transaction() as session:
        return session.scalars(
            select(Conversion.status).where(Conversion.id == conversion_id)
        ).one()


@pytest.mark.parametrize("path", PAGES)
def test_every_page_sends_to_the_login_without_a_session(client: FlaskClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 302
    assert r.headers["Location"] == "/console/login"


def test_actions_without_a_session_change_nothing(
    client: FlaskClient, failed: int, services: Services
) -> None:
    for path in ACTIONS:
        r = client.post(path.replace("/1/", f"/{failed}/"))
        assert (r.status_code, r.headers.get("Location")) == (302, "/console/login")
    assert status_of(services, failed) == Conversion.FAILED


def test_wrong_token_shows_the_form_again(client: FlaskClient) -> None:
    r = login(client, "not-the-token")
    assert r.status_code == 401
    assert 'name="token"' in r.get_data(as_text=True)
    assert "Set-Cookie" not in r.headers
    assert client.get("/console/").status_code == 302


def test_wrong_tokens_are_rate_limited_per_client(client: FlaskClient) -> None:
    start = datetime(2026, 11, 20, 12, tzinfo=UTC)
    with freeze_time(start) as clock:
        for _ in range(auth.LOGIN_FAILURES):
            assert login(client, "guess").status_code == 401
        clock.tick(10)
        blocked = login(client)  # even the right token: guessing gains nothing while blocked
        assert blocked.status_code == 429
        assert blocked.headers["Retry-After"] == "50"
        assert "try again in 50 seconds" in blocked.get_data(as_text=True)
        assert "Set-Cookie" not in blocked.headers
        other = client.post(
            "/console/login",
            data={"token": ADMIN_TOKEN},
            environ_base={"REMOTE_ADDR": "192.0.2.7"},
        )
        assert other.status_code == 302  # another client is not blocked
        clock.tick(51)
        assert login(client).status_code == 302


def test_login_sets_a_strict_http_only_cookie_without_the_token(client: FlaskClient) -> None:
    r = login(client)
    assert (r.status_code, r.headers["Location"]) == (302, "/console/")
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/console" in cookie
    assert "Secure" not in cookie  # localhost: browsers allow it without TLS
    assert ADMIN_TOKEN not in cookie
    for path in PAGES:
        answer = client.get(path)
        assert ADMIN_TOKEN not in answer.get_data(as_text=True)
        assert ADMIN_TOKEN not in answer.headers.get("Location", "")


def test_the_cookie_is_secure_off_localhost(app: Flask) -> None:
    client = app.test_client()
    r = client.post(
        "/console/login", data={"token": ADMIN_TOKEN}, base_url="http://waconv.example.com"
    )
    assert "; Secure" in r.headers["Set-Cookie"]


def test_a_new_admin_token_ends_every_session(
    make_app: Callable[..., Flask], browser: FlaskClient
) -> None:
    cookie = browser.get_cookie("waconv_console", path="/console")
    assert cookie is not None
    other = make_app(admin_token="a-new-admin-token").test_client()
    other.set_cookie(cookie.key, cookie.value, path="/console")
    assert other.get("/console/").status_code == 302


def test_a_forged_cookie_is_refused(client: FlaskClient) -> None:
    client.set_cookie("waconv_console", "eyJjc3JmIjoieCJ9.forged.sig", path="/console")
    assert client.get("/console/").status_code == 302


def test_logout_ends_the_session(browser: FlaskClient) -> None:
    r = browser.post("/console/logout", data={"csrf_token": csrf_of(browser)})
    assert (r.status_code, r.headers["Location"]) == (302, "/console/login")
    assert browser.get("/console/").status_code == 302


@pytest.mark.parametrize("token", [None, "", "wrong"])
def test_retry_needs_the_csrf_token(
    browser: FlaskClient, failed: int, services: Services, token: str | None
) -> None:
    data = {} if token is None else {"csrf_token": token}
    r = browser.post(f"/console/conversions/{failed}/retry", data=data)
    assert r.status_code == 400
    assert status_of(services, failed) == Conversion.FAILED


def test_a_csrf_token_of_another_session_is_refused(
    app: Flask, browser: FlaskClient, failed: int, services: Services
) -> None:
    other = app.test_client()
    login(other)
    r = browser.post(f"/console/conversions/{failed}/retry", data={"csrf_token": csrf_of(other)})
    assert r.status_code == 400
    assert status_of(services, failed) == Conversion.FAILED


def test_retry_a_failed_conversion(browser: FlaskClient, failed: int, services: Services) -> None:
    page = browser.get(f"/console/conversions/{failed}").get_data(as_text=True)
    assert "Meta refused the event: fix the click id" in page
    assert "Invalid parameter" in page and "2804003" in page
    assert '"event_name": "Purchase"' in html.unescape(page)  # what was sent
    assert "AbCdEfGhIjK" in page  # Meta's answer, from the request log
    r = browser.post(f"/console/conversions/{failed}/retry", data={"csrf_token": csrf_of(browser)})
    assert r.status_code == 302
    assert status_of(services, failed) == Conversion.PENDING
    after = browser.get(r.headers["Location"]).get_data(as_text=True)
    assert f"Conversion {failed} is queued again." in after
    # The notice is shown once.
    assert "queued again" not in browser.get(r.headers["Location"]).get_data(as_text=True)


def test_retry_of_a_pending_conversion_says_why_not(
    browser: FlaskClient, failed: int, services: Services
) -> None:
    csrf = csrf_of(browser)
    browser.post(f"/console/conversions/{failed}/retry", data={"csrf_token": csrf})
    r = browser.post(
        f"/console/conversions/{failed}/retry", data={"csrf_token": csrf}, follow_redirects=True
    )
    assert "only failed conversions can be retried" in r.get_data(as_text=True)


def test_cancel_a_failed_conversion(browser: FlaskClient, failed: int, services: Services) -> None:
    r = browser.post(
        f"/console/conversions/{failed}/cancel",
        data={"csrf_token": csrf_of(browser)},
        follow_redirects=True,
    )
    assert "will never be sent" in r.get_data(as_text=True)
    assert status_of(services, failed) == Conversion.CANCELED


def test_cancel_needs_the_csrf_token(browser: FlaskClient, failed: int, services: Services) -> None:
    assert browser.post(f"/console/conversions/{failed}/cancel").status_code == 400
    assert status_of(services, failed) == Conversion.FAILED


def test_conversions_list_filters(browser: FlaskClient, failed: int) -> None:
    page = browser.get("/console/conversions?status=failed&event_name=").get_data(as_text=True)
    assert f"#{failed}" in page
    page = browser.get("/console/conversions?status=sent").get_data(as_text=True)
    assert f"#{failed}" not in page
    page = browser.get("/console/conversions?status=bogus").get_data(as_text=True)
    assert "status" in page and f"#{failed}" in page  # refused filter said, list unfiltered


def test_ads_page_shows_the_report(browser: FlaskClient, clicked: str) -> None:
    page = browser.get("/console/?since=2025-06-01&until=2025-06-30").get_data(as_text=True)
    assert "Chat with us" in page  # the ad's headline
    assert "<svg" in page and "2025-06-18: 1 clicks, 0 conversions" in page
    csv = browser.get("/console/ads.csv?since=2025-06-01&until=2025-06-30")
    assert csv.mimetype == "text/csv"
    assert "120226305854810726" in csv.get_data(as_text=True)


def test_conversation_search_by_name_and_timeline(
    browser: FlaskClient, post_webhook: Callable[..., Any]
) -> None:
    post_webhook(
        p.delivery(
            p.text("how much is it?", ref=p.referral(), ts=1750275992),
            contacts=[p.contact(profile={"name": "Ana Gómez"})],
        )
    )
    page = browser.get("/console/conversations?q=g%C3%B3m").get_data(as_text=True)
    link = re.search(r'href="(/console/conversations/\d+)"', page)
    assert link, page
    detail = browser.get(link.group(1)).get_data(as_text=True)
    assert "Ad click" in detail and "how much is it?" in detail
    assert detail.index("Ad click") < detail.index("how much is it?")
    # A % is a character searched for, not a wildcard that lists everybody.
    assert "No conversation matches" in browser.get("/console/conversations?q=%25").get_data(
        as_text=True
    )


def _found(browser: FlaskClient, q: str) -> list[str]:
    """The conversation ids a search lists."""
    page = browser.get("/console/conversations", query_string={"q": q}).get_data(as_text=True)
    return re.findall(r'href="/console/conversations/(\d+)"', page)


def test_conversation_search_by_any_id_the_user_has_had(
    browser: FlaskClient, services: Services
) -> None:
    with services.db.transaction() as session:
        session.add(Account(waba_id=WABA_ID))
        session.flush()
        ana = Conversation(
            waba_id=WABA_ID,
            phone_number_id=PHONE_NUMBER_ID,
            wa_id="16505550100",
            user_id="US.13491208655302741918",
            parent_user_id="US.ENT.11815799212886844830",
            profile_name="Ana",
        )
        other = Conversation(
            waba_id=WABA_ID, phone_number_id=PHONE_NUMBER_ID, wa_id="16505550199", username="ana_b"
        )
        session.add_all([ana, other])
        session.flush()
        # Meta changed both of Ana's ids earlier: her old ones still find her.
        session.add_all(
            [
                UserAlias(
                    waba_id=WABA_ID, kind="wa_id", previous="16505550000", current="16505550100"
                ),
                UserAlias(
                    waba_id=WABA_ID,
                    kind="user_id",
                    previous="US.99999999999999999999",
                    current="US.13491208655302741918",
                ),
            ]
        )
        ana_id, other_id = str(ana.id), str(other.id)
    for q in [
        "16505550100",
        "+1 (650) 555-0100",
        "US.13491208655302741918",
        "US.ENT.11815799212886844830",
        "16505550000",
        "US.99999999999999999999",
    ]:
        assert _found(browser, q) == [ana_id], q
    assert sorted(_found(browser, "ana")) == sorted([ana_id, other_id])  # name or username
    assert _found(browser, "1650555") == []  # ids match whole, names in part


def test_conversation_search_by_an_id_the_user_had_before(
    browser: FlaskClient, post_webhook: Callable[..., Any]
) -> None:
    post_webhook(p.delivery(p.text("hi", ref=p.referral(), ts=1750275992)))
    post_webhook(p.delivery(p.changed_number("16505551234", "16505550000", ts=1750276000)))

    def found(q: str) -> list[str]:
        page = browser.get("/console/conversations", query_string={"q": q})
        return re.findall(r'href="(/console/conversations/\d+)"', page.get_data(as_text=True))

    # The admin API finds the user by any id they have had; so does the console.
    assert found("16505550000")
    assert found("16505551234") == found("16505550000")


def test_resume_a_paused_account(browser: FlaskClient, services: Services) -> None:
    with services.db.transaction() as session:
        account, _ = registry.register(session, WABA_ID)
        registry.pause(account, "Meta refused the token (code 190)", code="190")
    page = browser.get("/console/accounts").get_data(as_text=True)
    assert "Meta refused the token (code 190)" in page
    r = browser.post(f"/console/accounts/{WABA_ID}/resume", data={"csrf_token": csrf_of(browser)})
    assert r.status_code == 302
    with services.db.transaction() as session:
        status = session.scalars(select(Account.status).where(Account.waba_id == WABA_ID)).one()
    assert status == Account.ACTIVE


def test_the_accounts_page_shows_each_accounts_own_destination(
    browser: FlaskClient, services: Services
) -> None:
    other = "300000000000077"
    with services.db.transaction() as session:
        registry.register(session, WABA_ID)[0].destination = "both"
        registry.register(session, other)
    page = browser.get("/console/accounts").get_data(as_text=True)
    mine, theirs = page.split(f"WABA {other}")
    assert "<dt>Destination</dt><dd>both</dd>" in mine
    assert "<dt>Destination</dt><dd>graph</dd>" in theirs


def test_replay_a_failed_delivery(
    browser: FlaskClient, services: Services, post_webhook: Callable[..., Any]
) -> None:
    post_webhook(p.delivery(p.text("hi")))
    with services.db.transaction() as session:
        session.execute(
            update(WebhookDelivery).values(status=WebhookDelivery.FAILED, error="RuntimeError: x")
        )
        delivery_id = session.scalars(select(WebhookDelivery.id)).one()
    page = browser.get("/console/webhooks?status=failed").get_data(as_text=True)
    assert "RuntimeError: x" in page and "Replay" in page
    r = browser.post(
        f"/console/webhooks/{delivery_id}/replay", data={"csrf_token": csrf_of(browser)}
    )
    assert r.status_code == 302
    with services.db.transaction() as session:
        assert session.get(WebhookDelivery, delivery_id).status == WebhookDelivery.PROCESSED  # type: ignore[union-attr]


def test_shop_orders_say_what_became_of_each(
    browser: FlaskClient, services: Services, failed: int
) -> None:
    now = datetime.now(UTC)
    receipt = {"connector": "shopify", "topic": "orders/paid", "received_at": now}
    with services.db.transaction() as session:
        session.add_all(
            [
                ConnectorReceipt(
                    **receipt,
                    webhook_id="w-1",
                    order_id="820982911946154508",
                    event_name="Purchase",
                    outcome=ConnectorReceipt.MATCHED,
                    matched_by="phone",
                    conversion_id=failed,
                ),
                ConnectorReceipt(
                    **receipt,
                    webhook_id="w-2",
                    order_id="820982911946154509",
                    event_name="Purchase",
                    outcome=ConnectorReceipt.UNMATCHED,
                    reason="no conversation with an ad click has the order's phone number",
                ),
            ]
        )
    page = browser.get("/console/orders").get_data(as_text=True)
    assert 'aria-current="page">Orders' in page
    assert "820982911946154508" in page and "820982911946154509" in page
    assert f'href="/console/conversions/{failed}"' in page
    assert "no conversation with an ad click has the order&#39;s phone number" in page
    unmatched = browser.get("/console/orders?outcome=unmatched").get_data(as_text=True)
    assert "820982911946154509" in unmatched and "820982911946154508" not in unmatched
    assert "No order." in browser.get("/console/orders?outcome=refused").get_data(as_text=True)


def test_console_is_off_without_an_admin_token(make_app: Callable[..., Flask]) -> None:
    client = make_app(admin_token="").test_client()
    r = client.get("/console/login")
    assert r.status_code == 503
    assert "WACONV_ADMIN_TOKEN" in r.get_data(as_text=True)
