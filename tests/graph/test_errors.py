"""The classification table row by row, GraphError parsing/formatting, operator messages."""

from __future__ import annotations

from typing import Any

import pytest

from waconv.graph.errors import (
    CLASSIFICATION,
    Disposition,
    GraphError,
    classify,
    matching_rule,
    operator_message,
)

RETRY, INVALID, ACCOUNT = Disposition.RETRY, Disposition.INVALID, Disposition.ACCOUNT
TOKEN = "EAAsecret123"


def meta(status: int, code: int | None, subcode: int | None = None, **extra: Any) -> GraphError:
    return GraphError("Invalid parameter", http_status=status, code=code, subcode=subcode, **extra)


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        # network and partial receipts
        pytest.param(GraphError("timed out after 30s", network=True), RETRY, id="timeout"),
        pytest.param(GraphError("connection failed: reset", network=True), RETRY, id="reset"),
        pytest.param(
            GraphError("Meta acknowledged 0 of 3 events", http_status=200, partial=True),
            RETRY,
            id="partial-receipt",
        ),
        # HTTP 5xx without a known code
        pytest.param(meta(500, None), RETRY, id="http-500-html"),
        pytest.param(meta(502, None), RETRY, id="http-502"),
        pytest.param(meta(503, 2), RETRY, id="http-503-code-2"),
        # Meta's temporary and throttling codes
        *[
            pytest.param(meta(400, code), RETRY, id=f"code-{code}")
            for code in (1, 2, 4, 17, 32, 341, 368, 613, 80000, 80004, 80014, 80099)
        ],
        pytest.param(meta(400, 17, 2446079), RETRY, id="code-17-subcode"),
        pytest.param(meta(400, 613, 1487742), RETRY, id="code-613-subcode"),
        pytest.param(meta(429, 4), RETRY, id="code-4-http-429"),
        pytest.param(meta(429, None), RETRY, id="http-429-no-code"),
        # is_transient wins over every code, account and invalid ones included
        pytest.param(meta(400, 100, 2804087, is_transient=True), RETRY, id="transient-100"),
        pytest.param(meta(400, 190, is_transient=True), RETRY, id="transient-190"),
        pytest.param(meta(400, 999, is_transient=True), RETRY, id="transient-unknown"),
        # account configuration
        pytest.param(meta(400, 190), ACCOUNT, id="token-190"),
        pytest.param(meta(401, 190, 463), ACCOUNT, id="token-190-463"),
        pytest.param(meta(400, 190, 460), ACCOUNT, id="token-190-460"),
        pytest.param(meta(403, 10), ACCOUNT, id="permission-10"),
        pytest.param(meta(400, 3), ACCOUNT, id="capability-3"),
        pytest.param(meta(403, 200), ACCOUNT, id="permission-200"),
        pytest.param(meta(403, 299), ACCOUNT, id="permission-299"),
        pytest.param(meta(400, 100, 33), ACCOUNT, id="dataset-100-33"),
        pytest.param(meta(400, 100, 2804132), ACCOUNT, id="dataset-not-linked"),
        # invalid content
        pytest.param(meta(400, 100, 2804066), INVALID, id="event-name-2804066"),
        pytest.param(meta(400, 100, 2804087), INVALID, id="ctwa-clid-2804087"),
        pytest.param(meta(400, 100, 2804050), INVALID, id="100-2804050"),
        pytest.param(meta(400, 100, 2804003), INVALID, id="event-time-2804003"),
        pytest.param(meta(400, 100), INVALID, id="100-no-subcode"),
        # 100 about the request itself, not an event: the configuration (held)
        pytest.param(
            GraphError(
                "API calls from the server require an appsecret_proof argument",
                http_status=400,
                code=100,
            ),
            ACCOUNT,
            id="100-appsecret-proof-required",
        ),
        pytest.param(
            GraphError(
                "Invalid parameter", http_status=400, code=100, user_msg="bad partner_agent"
            ),
            ACCOUNT,
            id="100-partner-agent",
        ),
        pytest.param(meta(400, 2500), ACCOUNT, id="unknown-path-2500"),
        pytest.param(meta(400, 803), ACCOUNT, id="unknown-alias-803"),
        pytest.param(meta(404, None), ACCOUNT, id="4xx-not-graph"),
        # Meta reports bad events as code 100: another code is about the request (held)
        pytest.param(meta(400, 12345), ACCOUNT, id="other-code-4xx"),
        pytest.param(meta(400, 2635), ACCOUNT, id="deprecated-version-2635"),
        pytest.param(meta(400, 300), ACCOUNT, id="code-300-outside-permissions"),
        pytest.param(meta(400, 80100), ACCOUNT, id="code-80100-outside-buc-range"),
        # decided by the code, not the HTTP status: 100 is never retried (gotcha 16)
        pytest.param(meta(500, 100, 2804087), INVALID, id="100-with-http-500"),
        pytest.param(meta(503, 100), INVALID, id="100-no-subcode-http-503"),
        # unknown
        pytest.param(GraphError("odd", http_status=200), RETRY, id="2xx-unparseable"),
        pytest.param(GraphError("odd"), RETRY, id="nothing-known"),
        pytest.param(meta(302, 12345), RETRY, id="unknown-code-3xx"),
    ],
)
def test_classify_table(err: GraphError, expected: Disposition) -> None:
    assert classify(err) is expected


def test_the_table_ends_with_a_catch_all() -> None:
    assert CLASSIFICATION[-1].applies(GraphError("anything"))
    assert len({rule.name for rule in CLASSIFICATION}) == len(CLASSIFICATION)
    assert matching_rule(meta(400, 100, 2804087)).name == "invalid-ctwa-clid"


def test_from_response_parses_meta_envelope() -> None:
    body = {
        "error": {
            "message": "Invalid parameter",
            "type": "OAuthException",
            "code": 100,
            "error_subcode": 2804087,
            "is_transient": False,
            "error_user_title": "Messaging Event Invalid Ctwa Clid",
            "error_user_msg": "The click id is not valid.",
            "fbtrace_id": "AbC",
        }
    }
    err = GraphError.from_response(400, body, "")
    assert (err.http_status, err.code, err.subcode, err.type) == (
        400,
        100,
        2804087,
        "OAuthException",
    )
    assert err.user_title == "Messaging Event Invalid Ctwa Clid"
    assert err.user_msg == "The click id is not valid."
    assert err.fbtrace_id == "AbC"
    assert (err.is_transient, err.network, err.partial) == (False, False, False)
    assert str(err) == (
        "Graph error 100/2804087 (HTTP 400): Invalid parameter"
        " \u2014 Messaging Event Invalid Ctwa Clid [fbtrace AbC]"
    )


def test_from_response_tolerates_string_codes_and_reads_is_transient() -> None:
    body = {"error": {"message": "x", "code": "2", "error_subcode": "", "is_transient": True}}
    err = GraphError.from_response(503, body, "")
    assert (err.code, err.subcode, err.is_transient) == (2, None, True)
    assert str(err) == "Graph error 2 (HTTP 503): x"


def test_from_response_without_json_says_so_briefly() -> None:
    page = "<html><body><h1>502 Bad Gateway</h1>" + "x" * 5000 + "</body></html>"
    err = GraphError.from_response(502, None, page)
    assert err.code is None
    assert "non-JSON" in err.message
    assert "502 Bad Gateway" in err.message
    assert len(str(err)) < 200
    assert classify(err) is RETRY


def test_from_response_json_without_envelope_and_empty_body() -> None:
    assert "envelope" in GraphError.from_response(400, {"foo": 1}, "{}").message
    assert GraphError.from_response(500, None, "").message == "empty response body"


def test_str_is_one_line_and_network_errors_read_as_such() -> None:
    err = GraphError("line one\nline two", http_status=400, code=100)
    assert "\n" not in str(err)
    assert str(GraphError("timed out after 30s", network=True)) == (
        "Graph network error: timed out after 30s"
    )


def test_redact_removes_a_token_from_str_repr_and_operator_message() -> None:
    err = GraphError(
        f"bad token {TOKEN}", http_status=400, code=190, user_title=TOKEN, user_msg=f"x{TOKEN}"
    ).redact(TOKEN)
    texts = [str(err), repr(err), operator_message(err), str(err.args), err.user_msg or ""]
    assert all(TOKEN not in text for text in texts)
    assert "[redacted]" in str(err)


WABA = "102290129340398"


@pytest.mark.parametrize(
    ("err", "must_contain"),
    [
        pytest.param(
            meta(400, 190, 463),
            [f"waconv accounts set-token --waba-id {WABA}", "WACONV_ACCESS_TOKEN", "190/463"],
            id="190",
        ),
        pytest.param(
            meta(403, 10),
            ["whatsapp_business_manage_events", "whatsapp_business_management", "error 10"],
            id="10",
        ),
        pytest.param(
            meta(403, 200),
            ["whatsapp_business_manage_events", "whatsapp_business_management", "error 200"],
            id="200",
        ),
        pytest.param(meta(400, 100, 33), ["UPLOAD", "dataset", "100/33"], id="100-33"),
        pytest.param(
            meta(400, 100, 2804132),
            [f"waconv provision-dataset --waba-id {WABA}", "not linked", "100/2804132"],
            id="2804132",
        ),
        pytest.param(
            meta(400, 100, 2804066),
            ["event name", "business messaging", "LeadSubmitted", "100/2804066"],
            id="2804066",
        ),
        pytest.param(meta(400, 100, 2804087), ["ctwa_clid", "100/2804087"], id="2804087"),
        pytest.param(meta(400, 17, 2446079), ["rate-limiting", "17/2446079"], id="rate-limit"),
        pytest.param(
            GraphError("timed out after 30s", network=True),
            ["timed out after 30s", "network error"],
            id="network",
        ),
        pytest.param(
            GraphError("Meta acknowledged 0 of 3 events", http_status=200, partial=True),
            ["0 of 3", "HTTP 200"],
            id="partial",
        ),
        pytest.param(
            GraphError(
                "Something new", http_status=400, code=2600, user_title="Odd", fbtrace_id="T1"
            ),
            ["Something new", "Odd", "2600", "fbtrace T1"],
            id="default",
        ),
    ],
)
def test_operator_message(err: GraphError, must_contain: list[str]) -> None:
    err.fbtrace_id = err.fbtrace_id or "AbC"
    line = operator_message(err, waba_id=WABA)
    assert "\n" not in line
    assert line.startswith(f"cannot send events for WhatsApp Business Account {WABA}: ")
    for fragment in must_contain:
        assert fragment in line
    if not err.network:
        assert "fbtrace" in line


def test_operator_message_without_waba_and_with_another_action() -> None:
    line = operator_message(meta(400, 190), action="provision the dataset")
    assert line.startswith("cannot provision the dataset: ")
    assert "--waba-id <id>" in line


@pytest.mark.parametrize(
    "err",
    [
        GraphError("connection failed: refused", network=True),
        meta(400, 17, 2446079),
        meta(400, 368),
        meta(503, None),
    ],
    ids=["network", "rate-limit", "policy-block", "temporary"],
)
def test_a_command_is_not_said_to_retry_by_itself(err: GraphError) -> None:
    # The dispatcher tries again on its own; `waconv provision-dataset` does not.
    assert "waconv retries" in operator_message(err, waba_id=WABA)
    line = operator_message(err, waba_id=WABA, action="get or create the dataset", retried=False)
    assert "waconv retries" not in line
    assert "run the command again" in line
