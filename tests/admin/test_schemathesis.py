"""Property-based run of the admin API against its own OpenAPI document (schemathesis).

Requests are generated from ``/admin/openapi.json`` (valid and invalid ones) and sent through
the Flask app with the admin token. Every answer must be a non-5xx whose status, content type
and body are the ones the document declares. The database holds a conversation with a click,
one without, and conversions in every state, so the examples in the document reach real rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests import payloads as p
from tests.admin.conftest import OTHER_WA_ID, Admin, set_conversion
from tests.conftest import ADMIN_TOKEN, WABA_ID
from waconv.clock import utcnow
from waconv.conversions.requestlog import RequestRecord, record_request
from waconv.models import Conversion
from waconv.services import Services

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MAX_EXAMPLES = 30  # per operation and mode: bounded, about a second per backend
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture
def admin_schema(
    app: Flask, services: Services, admin: Admin, clicked: str, post_webhook: Callable[..., Any]
) -> Any:
    msg = p.text("hi", wa_id=OTHER_WA_ID)
    assert post_webhook(p.delivery(msg, contacts=[p.contact(OTHER_WA_ID)])).status_code == 200
    states = [
        Conversion.FAILED,
        Conversion.SENT,
        Conversion.EXPIRED,
        Conversion.PENDING,
        Conversion.CANCELED,
    ]
    ids = []
    for n, status in enumerate(states):
        r = admin.mark(wa_id=clicked, event_name="OrderCreated", order_id=f"seed-{n}")
        assert r.status_code == 202
        set_conversion(services, r.json["id"], status=status, last_error=f"seeded {status}")
        ids.append(r.json["id"])
    with services.db.transaction() as session:  # one answered request, one unanswered
        for status in (200, None):
            record = RequestRecord(
                at=utcnow(),
                waba_id=WABA_ID,
                destination="graph",
                events=2,
                bytes=600,
                duration_ms=25,
                http_status=status,
                events_received=2 if status else None,
                fbtrace_id="AbCdEf123" if status else None,
                messages=[] if status else None,
                error_message=None if status else "no answer",
            )
            record_request(session, record, ids[:2])
    return schemathesis.openapi.from_wsgi("/admin/openapi.json", app, headers=AUTH)


def _invalid_as_sent(case: schemathesis.Case) -> bool:
    """Whether a negative case is still invalid once sent. Two of its mutations never reach
    the server: a query parameter with no name or no value (``{"": []}`` encodes to nothing),
    and a missing or wrong Authorization header (every request carries the admin token; the
    refusals are tested in test_auth.py). Sent anyway, the request is valid, and the API's
    200 was reported as "schema-violating request accepted"."""
    if any(name == "" or value == [] for name, value in (case.query or {}).items()):
        return False
    mutations = getattr(case.meta.phase.data, "mutations", ()) if case.meta else ()
    return not any(m.parameter == "Authorization" for m in mutations)


# Every operation of the document; test_every_operation_is_tested keeps this list complete.
# (schemathesis leaves out the operation that serves the document it loaded, getOpenAPI.)
OPERATIONS = [
    "getConversation",
    "markConversion",
    "listConversions",
    "getConversion",
    "retryConversion",
    "cancelConversion",
    "listRequests",
    "listUnmatchedOrders",
    "adsReport",
]


def test_every_operation_is_tested(admin_schema: Any) -> None:
    found = {
        result.ok().definition.raw["operationId"] for result in admin_schema.get_all_operations()
    }
    assert found == set(OPERATIONS)


# schemathesis' own pytest integration (`from_fixture` + `parametrize`) does not run under
# pytest 9; the operations are driven through its Hypothesis strategies instead.
@pytest.mark.parametrize("mode", ["examples", GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("operation_id", OPERATIONS)
def test_admin_api_matches_its_openapi_document(
    admin_schema: Any, operation_id: str, mode: str
) -> None:
    operation = admin_schema.find_operation_by_id(operation_id)
    if mode == "examples":
        # The document's own examples reach the seeded rows: 200/202 paths, not only refusals.
        strategy = st.one_of(admin_schema.get_strategies_from_examples(operation))
    else:
        strategy = operation.as_strategy(generation_mode=GenerationMode(mode))

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        if mode == GenerationMode.NEGATIVE:
            assume(_invalid_as_sent(case))
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    run()
