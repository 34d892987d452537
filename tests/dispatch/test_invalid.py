"""A batch Meta rejects for one bad event: split, send the good ones in the same run, fail the
bad ones with Meta's words."""

from __future__ import annotations

from freezegun.api import FrozenDateTimeFactory

from tests.dispatch.helpers import by_event_id, clid, enqueue_many, status_counts
from waconv.conversions.dispatcher import Dispatcher
from waconv.graph.fake import FakeGraph
from waconv.models import Conversion
from waconv.services import Services

INVALID_PARAMETER = 100
INVALID_CTWA_CLID = 2804087


def assert_failed_with_metas_words(row: Conversion) -> None:
    assert row.status == Conversion.FAILED
    assert row.last_error_code == INVALID_PARAMETER
    assert row.last_error_subcode == INVALID_CTWA_CLID
    assert row.last_error_title == "Messaging Event Invalid Ctwa Clid"
    assert row.last_error_fbtrace_id
    assert row.last_error is not None
    assert "ctwa_clid" in row.last_error
    assert "100/2804087" in row.last_error


def test_one_invalid_event_in_1000_the_other_999_go_in_the_same_run(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    ids = enqueue_many(ready, 1000)
    bad = 617
    fake_graph.invalid_clids.add(clid("evt", bad))

    stats = Dispatcher(ready).run_once()

    assert (stats.sent, stats.failed, stats.retried) == (999, 1, 0)
    rows = by_event_id(ready)
    assert_failed_with_metas_words(rows[ids[bad]])
    assert status_counts(ready) == {Conversion.SENT: 999, Conversion.FAILED: 1}
    accepted = fake_graph.accepted_event_ids()
    assert set(accepted) == set(ids) - {ids[bad]}
    assert set(accepted.values()) == {1}
    # Bisection: one rejected request per level (10 levels for 1,000) plus the accepted halves.
    assert len(fake_graph.events_requests()) <= 2 * 10 + 1
    assert max(fake_graph.batch_sizes(accepted_only=True)) == 500
    # Every attempt counted once, whatever the number of requests.
    assert {r.attempts for r in rows.values()} == {1}
    # The failed event is never sent again.
    assert Dispatcher(ready).run_once().requests == 0


def test_two_invalid_events(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    ids = enqueue_many(ready, 1000)
    bad = {3, 998}
    fake_graph.invalid_clids.update(clid("evt", n) for n in bad)

    stats = Dispatcher(ready).run_once()

    assert (stats.sent, stats.failed) == (998, 2)
    rows = by_event_id(ready)
    for n in bad:
        assert_failed_with_metas_words(rows[ids[n]])
    assert set(fake_graph.accepted_event_ids()) == set(ids) - {ids[n] for n in bad}
    assert set(fake_graph.accepted_event_ids().values()) == {1}


def test_a_batch_where_every_event_is_invalid(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    ids = enqueue_many(ready, 64)
    fake_graph.invalid_clids.update(clid("evt", n) for n in range(64))

    stats = Dispatcher(ready).run_once()

    assert (stats.sent, stats.failed) == (0, 64)
    rows = by_event_id(ready)
    for eid in ids:
        assert_failed_with_metas_words(rows[eid])
    assert not fake_graph.accepted_event_ids()
    assert len(fake_graph.events_requests()) == 2 * 64 - 1  # the full bisection tree


def test_an_invalid_event_name_fails_with_its_own_reason(
    freezer: FrozenDateTimeFactory, ready: Services, fake_graph: FakeGraph
) -> None:
    """Meta refusing an event name (100/2804066): the operator learns which names are allowed."""
    good = enqueue_many(ready, 5)
    fake_graph.invalid_clids.clear()
    # Make one event's name invalid as Meta sees it: the fake rejects names outside the 14.
    from tests.dispatch.helpers import one

    target = one(ready, good[2])
    with ready.db.transaction() as session:
        row = session.get(Conversion, target.id)
        assert row is not None
        row.event_name = "Lead"

    Dispatcher(ready).run_once()

    rows = by_event_id(ready)
    failed = rows[good[2]]
    assert failed.status == Conversion.FAILED
    assert (failed.last_error_code, failed.last_error_subcode) == (100, 2804066)
    assert failed.last_error is not None and "LeadSubmitted" in failed.last_error
    assert {rows[e].status for e in good if e != good[2]} == {Conversion.SENT}
