"""POST /admin/conversions/<id>/cancel: a pending or failed conversion is never sent, and
nothing makes it pending again."""

from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time

from tests.admin.conftest import Admin, set_conversion
from tests.conftest import WABA_ID
from tests.webhooks.helpers import one
from waconv.clock import utcnow
from waconv.conversions.dispatcher import Dispatcher
from waconv.graph.fake import FakeGraph
from waconv.models import Account, Conversion
from waconv.services import Services

MARK = {"event_name": "Purchase", "order_id": "C-1", "custom_data": {"value": 5, "currency": "EUR"}}


@pytest.fixture
def pending(admin: Admin, clicked: str) -> int:
    r = admin.mark(wa_id=clicked, **MARK)
    assert r.status_code == 202
    return int(r.json["id"])


def test_a_pending_conversion_canceled_is_never_sent(
    admin: Admin, services: Services, fake_graph: FakeGraph, pending: int
) -> None:
    r = admin.post(f"/admin/conversions/{pending}/cancel")
    assert r.status_code == 200, r.json
    assert r.json["id"] == pending
    assert r.json["status"] == "canceled"
    assert one(services, Conversion).status == Conversion.CANCELED

    Dispatcher(services).run_once()

    assert fake_graph.events_requests() == []
    assert one(services, Conversion).status == Conversion.CANCELED


def test_a_failed_conversion_can_be_canceled_and_then_not_retried(
    admin: Admin, services: Services, pending: int
) -> None:
    set_conversion(services, pending, status=Conversion.FAILED, attempts=1, last_error="refused")
    r = admin.post(f"/admin/conversions/{pending}/cancel")
    assert r.status_code == 200
    assert (r.json["status"], r.json["last_error"]) == ("canceled", "refused")

    r = admin.post(f"/admin/conversions/{pending}/retry")
    assert r.status_code == 409
    assert r.json["error"]["code"] == "canceled"
    assert one(services, Conversion).status == Conversion.CANCELED


@pytest.mark.parametrize("status", [Conversion.SENT, Conversion.EXPIRED, Conversion.CANCELED])
def test_only_pending_or_failed_conversions_can_be_canceled(
    admin: Admin, services: Services, pending: int, status: str
) -> None:
    set_conversion(services, pending, status=status)
    r = admin.post(f"/admin/conversions/{pending}/cancel")
    assert r.status_code == 409
    assert r.json["error"]["code"] == "not_cancelable"
    assert f"is {status}" in r.json["error"]["message"]
    assert one(services, Conversion).status == status


def test_marking_it_again_answers_the_canceled_record(
    admin: Admin, services: Services, fake_graph: FakeGraph, clicked: str, pending: int
) -> None:
    assert admin.post(f"/admin/conversions/{pending}/cancel").status_code == 200
    for phone in (None, "106540352242922"):  # both of mark's lookups of an earlier record
        body = MARK if phone is None else {**MARK, "phone_number_id": phone}
        r = admin.mark(wa_id=clicked, **body)
        assert r.status_code == 200
        assert (r.json["id"], r.json["status"]) == (pending, "canceled")
    Dispatcher(services).run_once()
    assert fake_graph.events_requests() == []


def test_the_expiry_sweep_leaves_a_canceled_conversion_alone(
    admin: Admin, services: Services, fake_graph: FakeGraph, pending: int
) -> None:
    assert admin.post(f"/admin/conversions/{pending}/cancel").status_code == 200
    with freeze_time(utcnow() + timedelta(days=8)):
        Dispatcher(services).run_once()
    stored = one(services, Conversion)
    assert stored.status == Conversion.CANCELED
    assert fake_graph.events_requests() == []


def _lease_account(services: Services, until_offset: timedelta) -> None:
    with services.db.transaction() as session:
        account = session.query(Account).filter_by(waba_id=WABA_ID).one()
        account.dispatch_token = "another-dispatcher"
        account.dispatch_leased_until = utcnow() + until_offset


def test_a_due_conversion_of_an_account_being_sent_is_not_canceled_mid_request(
    admin: Admin, services: Services, pending: int
) -> None:
    """A dispatcher holding the account may have it in the request it is sending: canceling
    then would be a promise ("never sent") the API cannot keep."""
    _lease_account(services, timedelta(seconds=30))
    r = admin.post(f"/admin/conversions/{pending}/cancel")
    assert r.status_code == 409
    assert r.json["error"]["code"] == "in_flight"
    assert one(services, Conversion).status == Conversion.PENDING

    # Backing off (not due): no dispatcher can have claimed it.
    set_conversion(services, pending, next_attempt_at=utcnow() + timedelta(minutes=5))
    assert admin.post(f"/admin/conversions/{pending}/cancel").status_code == 200


def test_a_lapsed_lease_does_not_block_a_cancel(
    admin: Admin, services: Services, pending: int
) -> None:
    _lease_account(services, -timedelta(seconds=1))
    assert admin.post(f"/admin/conversions/{pending}/cancel").status_code == 200


def test_canceled_conversions_are_listed_by_status(
    admin: Admin, services: Services, clicked: str, pending: int
) -> None:
    other = admin.mark(wa_id=clicked, event_name="LeadSubmitted").json["id"]
    assert admin.post(f"/admin/conversions/{pending}/cancel").status_code == 200
    canceled = admin.get("/admin/conversions", status="canceled").json["items"]
    assert [c["id"] for c in canceled] == [pending]
    assert [c["id"] for c in admin.get("/admin/conversions", status="pending").json["items"]] == [
        other
    ]


@pytest.mark.parametrize("path", ["999999", str(2**63), "abc"])
def test_cancel_of_an_unknown_conversion_is_404(admin: Admin, pending: int, path: str) -> None:
    r = admin.post(f"/admin/conversions/{path}/cancel")
    assert r.status_code == 404
    assert one_status(admin, pending) == "pending"


def one_status(admin: Admin, conversion_id: int) -> str:
    return str(admin.get(f"/admin/conversions/{conversion_id}").json["status"])
