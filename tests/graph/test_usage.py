"""Meta's usage headers, read as Meta writes them; anything else reads as nothing known."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tests.conftest import DATASET_ID
from waconv.graph.client import GraphClient
from waconv.graph.errors import GraphError
from waconv.graph.fake import DEFAULT_TOKEN, FakeGraph
from waconv.graph.usage import (
    APP_USAGE_HEADER,
    BUSINESS_USAGE_HEADER,
    MAX_REGAIN,
    Usage,
    business_usage_header,
)


def test_the_business_use_case_header_gives_the_longest_wait_and_highest_percent() -> None:
    value = json.dumps(
        {
            "111": [
                {"type": "ads_management", "call_count": 40, "estimated_time_to_regain_access": 0},
                {
                    "type": "ads_insights",
                    "total_cputime": 100,
                    "estimated_time_to_regain_access": 7,
                },
            ],
            "222": [
                {"type": "ads_management", "total_time": 12, "estimated_time_to_regain_access": 3}
            ],
        }
    )
    usage = Usage.from_headers({BUSINESS_USAGE_HEADER: value})
    assert usage == Usage(None, 100.0, timedelta(minutes=7))
    assert usage is not None and usage.business_full and not usage.app_full


def test_the_app_usage_header_gives_its_highest_percent() -> None:
    usage = Usage.from_headers({APP_USAGE_HEADER: '{"call_count": 3, "total_time": 100}'})
    assert usage is not None and usage.app_percent == 100.0 and usage.app_full


@pytest.mark.parametrize(
    "value", ["", "not json", "[1, 2]", '{"x": "y"}', '{"111": [{"call_count": "lots"}]}']
)
def test_a_header_not_in_metas_shape_reads_as_nothing_known(value: str) -> None:
    usage = Usage.from_headers({BUSINESS_USAGE_HEADER: value, APP_USAGE_HEADER: value})
    assert usage is None or usage == Usage()


def test_no_wait_past_a_day_is_believed() -> None:
    usage = Usage.from_headers(
        {BUSINESS_USAGE_HEADER: business_usage_header("1", regain_minutes=10**9)}
    )
    assert usage is not None and usage.regain_after == MAX_REGAIN


def test_the_client_reads_the_headers_of_an_answer_and_of_an_error(fake_graph: FakeGraph) -> None:
    fake_graph.usage_headers[APP_USAGE_HEADER] = '{"call_count": 55}'
    event = {"event_name": "Purchase"}
    with GraphClient(fake_graph.url, "v26.0") as client:
        fake_graph.fail_next(
            1,
            "rate_limit",
            code=80004,
            headers={BUSINESS_USAGE_HEADER: business_usage_header("1", regain_minutes=4)},
        )
        with pytest.raises(GraphError) as raised:
            client.send_events(DATASET_ID, DEFAULT_TOKEN, [event])
        assert raised.value.usage == Usage(55.0, 0.0, timedelta(minutes=4))
