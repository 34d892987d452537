"""POST /admin/conversions/<id>/retry: a failed conversion goes back in the queue, nothing else."""

from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time

from tests.admin.conftest import Admin, set_conversion
from tests.webhooks.helpers import one
from waconv.clock import utcnow
from waconv.conversions.dispatcher import Dispatcher
from waconv.graph.fake import FakeGraph
from waconv.models import Conversion
from waconv.services import Services

REFUSAL = "Meta refused the event: Messaging Event Invalid Event Type"


@pytest.fixture
def failed(admin: Admin, services: Services, clicked: str) -> int:
    """A LeadSubmitted that Meta refused once."""
    r = admin.mark(wa_id=clicked, event_name="LeadSubmitted")
    assert r.status_code == 202
    set_conversion(
        services,
        r.json["id"],
        status=Conversion.FAILED,
        attempts=2,
        next_attempt_at=utcnow() + timedelta(days=30),
        last_error=REFUSAL,
        last_error_code=100,
        last_error_subcode=2804066,
    )
    return int(r.json["id"])


def test_retry_requeues_a_failed_conversion(admin: Admin, services: Services, failed: int) -> None:
    now = utcnow().replace(microsecond=0)
    with freeze_time(now):
        r = admin.post(f"/admin/conversions/{failed}/retry")
    assert r.status_code == 202, r.json
    assert r.json["id"] == failed
    assert r.json["status"] == "pending"
    assert r.json["attempts"] == 2
    assert r.json["last_error"] == REFUSAL  # kept until the next attempt says otherwise
    stored = one(services, Conversion)
    assert stored.status == Conversion.PENDING
    assert stored.next_attempt_at == now
    assert stored.attempts == 2
    assert stored.last_error == REFUSAL
    assert stored.last_error_code == 100


def test_a_retried_conversion_is_sent_by_the_next_dispatcher_pass(
    admin: Admin, services: Services, fake_graph: FakeGraph, failed: int
) -> None:
    assert admin.post(f"/admin/conversions/{failed}/retry").status_code == 202
    Dispatcher(services).run_once()
    stored = one(services, Conversion)
    assert stored.status == Conversion.SENT
    assert stored.attempts == 3
    assert stored.sent_at is not None
    assert stored.event_id in fake_graph.accepted_event_ids()


@pytest.mark.parametrize("status", [Conversion.PENDING, Conversion.SENT])
def test_only_failed_conversions_can_be_retried(
    admin: Admin, services: Services, failed: int, status: str
) -> None:
    set_conversion(services, failed, status=status)
    before = one(services, Conversion)
    r = admin.post(f"/admin/conversions/{failed}/retry")
    assert r.status_code == 409
    assert r.json["error"]["code"] == "not_failed"
    assert f"is {status}" in r.json["error"]["message"]
    after = one(services, Conversion)
    assert (after.status, after.next_attempt_at) == (before.status, before.next_attempt_at)


def test_an_expired_conversion_cannot_be_retried(
    admin: Admin, services: Services, failed: int
) -> None:
    set_conversion(services, failed, status=Conversion.EXPIRED)
    r = admin.post(f"/admin/conversions/{failed}/retry")
    assert r.status_code == 409
    assert r.json["error"]["code"] == "expired"
    assert "more than 7 days old" in r.json["error"]["message"]
    assert one(services, Conversion).status == Conversion.EXPIRED


def test_a_failed_conversion_too_old_to_send_cannot_be_retried(
    admin: Admin, services: Services, failed: int
) -> None:
    event_time = one(services, Conversion).event_time
    with freeze_time(event_time + timedelta(days=7) - timedelta(seconds=30)):
        r = admin.post(f"/admin/conversions/{failed}/retry")
    assert r.status_code == 409
    assert r.json["error"]["code"] == "too_old"
    assert "older than 7 days" in r.json["error"]["message"]
    assert one(services, Conversion).status == Conversion.FAILED

    with freeze_time(event_time + timedelta(days=6)):
        assert admin.post(f"/admin/conversions/{failed}/retry").status_code == 202


@pytest.mark.parametrize("path", ["999999", str(2**63), "abc"])
def test_retry_of_an_unknown_conversion_is_404(admin: Admin, failed: int, path: str) -> None:
    r = admin.post(f"/admin/conversions/{path}/retry")
    assert r.status_code == 404
    assert r.json["error"]["code"] in {"conversion_not_found", "not_found"}
