"""GraphClient against the FakeGraph over real HTTP on loopback (plus a stub session for the
answers the fake never gives)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from freezegun import freeze_time

from waconv import clock
from waconv.graph.client import MAX_EVENTS, EventsResult, GraphClient
from waconv.graph.errors import Disposition, GraphError, classify, operator_message
from waconv.graph.fake import FakeGraph, dataset_id_for

TOKEN = "EAAsecret123"
OTHER_TOKEN = "EAAwrong456"
VERSION = "v26.0"
WABA = "102290129340398"
RETRY, INVALID, ACCOUNT = Disposition.RETRY, Disposition.INVALID, Disposition.ACCOUNT


def event(n: int = 0, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": clock.to_unix(clock.utcnow()) - 60,
        "event_id": f"evt-{n}",
        "action_source": "business_messaging",
        "messaging_channel": "whatsapp",
        "user_data": {"whatsapp_business_account_id": WABA, "ctwa_clid": f"Aff-click-{n}"},
        "custom_data": {"currency": "USD", "value": 12.5},
    }
    body.update(overrides)
    return body


def events(count: int) -> list[dict[str, Any]]:
    return [event(n) for n in range(count)]


def assert_token_free(err: GraphError) -> None:
    for text in (str(err), repr(err), operator_message(err, waba_id=WABA), str(err.args)):
        assert TOKEN not in text
        assert OTHER_TOKEN not in text


@pytest.fixture
def fake() -> Iterator[FakeGraph]:
    with FakeGraph(valid_tokens={TOKEN}) as server:
        yield server


@pytest.fixture
def client(fake: FakeGraph) -> Iterator[GraphClient]:
    with GraphClient(fake.url, VERSION, timeout=5) as graph:
        yield graph


@pytest.fixture
def dataset(fake: FakeGraph) -> str:
    return fake.add_dataset(WABA)


def send_and_catch(client: GraphClient, dataset: str, batch: list[dict[str, Any]]) -> GraphError:
    with pytest.raises(GraphError) as caught:
        client.send_events(dataset, TOKEN, batch)
    assert_token_free(caught.value)
    return caught.value


# -- success and request shape --------------------------------------------------------------


def test_send_events_returns_meta_receipt(
    client: GraphClient, fake: FakeGraph, dataset: str
) -> None:
    result = client.send_events(dataset, TOKEN, events(3))
    assert isinstance(result, EventsResult)
    assert result.events_received == 3
    assert result.messages == []
    assert result.fbtrace_id
    assert [e["event_id"] for e in fake.events] == ["evt-0", "evt-1", "evt-2"]
    assert fake.accepted_event_ids() == {"evt-0": 1, "evt-1": 1, "evt-2": 1}
    assert fake.batch_sizes() == [3]


def test_request_carries_token_in_header_only_and_compact_json(
    client: GraphClient, fake: FakeGraph, dataset: str
) -> None:
    batch = events(2)
    client.send_events(dataset, TOKEN, batch)
    (request,) = fake.requests
    assert request["method"] == "POST"
    assert request["path"] == f"/{VERSION}/{dataset}/events"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert TOKEN not in request["path"]
    assert TOKEN not in json.dumps(request["query"])
    assert "access_token" not in request["query"]
    assert request["json"] == {"data": batch}
    expected_length = len(json.dumps({"data": batch}, separators=(",", ":")).encode())
    assert int(request["headers"]["Content-Length"]) == expected_length


def test_partner_agent_and_test_event_code_only_when_set(
    client: GraphClient, fake: FakeGraph, dataset: str
) -> None:
    client.send_events(dataset, TOKEN, events(1))
    client.send_events(dataset, TOKEN, events(1), partner_agent="", test_event_code=None)
    client.send_events(dataset, TOKEN, events(1), partner_agent="waconv", test_event_code="T1")
    bodies = [request["json"] for request in fake.requests]
    assert set(bodies[0]) == {"data"}
    assert set(bodies[1]) == {"data"}
    assert bodies[2]["partner_agent"] == "waconv"
    assert bodies[2]["test_event_code"] == "T1"


def test_appsecret_proof_is_hmac_of_token_when_app_secret_set(dataset: str) -> None:
    with (
        FakeGraph(valid_tokens={TOKEN}, app_secret="s3cret") as fake,
        GraphClient(fake.url, VERSION, app_secret="s3cret") as client,
    ):
        fake.add_dataset(WABA)
        client.send_events(dataset_id_for(WABA), TOKEN, events(1))
        proof = fake.requests[0]["query"]["appsecret_proof"]
        assert proof == hmac.new(b"s3cret", TOKEN.encode(), hashlib.sha256).hexdigest()


def test_no_appsecret_proof_without_app_secret(
    client: GraphClient, fake: FakeGraph, dataset: str
) -> None:
    client.send_events(dataset, TOKEN, events(1))
    assert fake.requests[0]["query"] == {}


def test_fake_requiring_appsecret_proof_refuses_a_client_without_it() -> None:
    with (
        FakeGraph(valid_tokens={TOKEN}, app_secret="s3cret") as fake,
        GraphClient(fake.url, VERSION) as client,
    ):
        err = send_and_catch(client, fake.add_dataset(WABA), events(1))
        assert err.code == 100
        assert "appsecret_proof" in err.message


def test_session_connection_is_reused(client: GraphClient, fake: FakeGraph, dataset: str) -> None:
    for _ in range(5):
        client.send_events(dataset, TOKEN, events(2))
    assert fake.connections_opened == 1


def test_client_repr_shows_no_token(client: GraphClient, fake: FakeGraph) -> None:
    assert repr(client) == f"GraphClient(base_url={fake.url!r}, version={VERSION!r})"


def test_url_joins_base_and_version() -> None:
    with GraphClient("https://graph.example/", VERSION) as client:
        assert client.url("1/events") == "https://graph.example/v26.0/1/events"


# -- limits --------------------------------------------------------------------------------


def test_more_than_max_events_raises_before_any_request(
    client: GraphClient, fake: FakeGraph, dataset: str
) -> None:
    with pytest.raises(ValueError, match="1001 events"):
        client.send_events(dataset, TOKEN, events(MAX_EVENTS + 1))
    with pytest.raises(ValueError):
        client.send_events(dataset, TOKEN, [])
    assert fake.requests == []
    assert client.send_events(dataset, TOKEN, events(MAX_EVENTS)).events_received == MAX_EVENTS


def test_fake_itself_rejects_more_than_max_events(fake: FakeGraph, dataset: str) -> None:
    body = json.dumps({"data": events(MAX_EVENTS + 1)}).encode()
    with requests.Session() as session:
        response = session.post(
            f"{fake.url}/{VERSION}/{dataset}/events",
            data=body,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            timeout=5,
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 100
    assert fake.events == []


# -- partial receipt and faults -------------------------------------------------------------


def test_partial_receipt_is_a_retryable_graph_error(
    client: GraphClient, fake: FakeGraph, dataset: str
) -> None:
    fake.fail_next(1, "received_zero")
    err = send_and_catch(client, dataset, events(3))
    assert err.partial
    assert err.http_status == 200
    assert err.code is None
    assert err.message == "Meta acknowledged 0 of 3 events"
    assert classify(err) is RETRY
    assert fake.events == []


@pytest.mark.parametrize(
    ("kind", "options", "expected", "status", "code"),
    [
        pytest.param("http500", {}, RETRY, 500, None, id="http500"),
        pytest.param("http503_json", {}, RETRY, 503, 2, id="http503_json"),
        pytest.param("rate_limit", {}, RETRY, 400, 4, id="rate-limit-4"),
        pytest.param("rate_limit", {"code": 17}, RETRY, 400, 17, id="rate-limit-17"),
        pytest.param("rate_limit", {"code": 613}, RETRY, 400, 613, id="rate-limit-613"),
        pytest.param(
            "rate_limit", {"code": 80004, "status": 429}, RETRY, 429, 80004, id="rate-limit-80004"
        ),
        pytest.param("transient", {}, RETRY, 500, 1, id="transient"),
        pytest.param("token", {}, ACCOUNT, 400, 190, id="token"),
        pytest.param("permission", {}, ACCOUNT, 403, 200, id="permission"),
        pytest.param(
            "error", {"code": 100, "subcode": 33}, ACCOUNT, 400, 100, id="error-dataset-33"
        ),
        pytest.param("received_zero", {}, RETRY, 200, None, id="received_zero"),
    ],
)
def test_fault_kinds_map_to_errors_and_dispositions(
    client: GraphClient,
    fake: FakeGraph,
    dataset: str,
    kind: str,
    options: dict[str, Any],
    expected: Disposition,
    status: int,
    code: int | None,
) -> None:
    fake.fail_next(1, kind, **options)
    err = send_and_catch(client, dataset, events(3))
    assert (err.http_status, err.code, err.network) == (status, code, False)
    assert classify(err) is expected
    assert fake.events == []
    # the fault was consumed: the same batch goes through next time
    assert client.send_events(dataset, TOKEN, events(3)).events_received == 3


def test_http500_html_body_is_described_briefly(
    client: GraphClient, fake: FakeGraph, dataset: str
) -> None:
    fake.fail_next(1, "http500")
    err = send_and_catch(client, dataset, events(1))
    assert err.message.startswith("non-JSON response body")
    assert "<html>" not in err.message


def test_transient_flag_is_read(client: GraphClient, fake: FakeGraph, dataset: str) -> None:
    fake.fail_next(1, "transient", status=400, code=100)
    err = send_and_catch(client, dataset, events(1))
    assert err.is_transient
    assert classify(err) is RETRY


def test_timeout_is_a_network_error(client: GraphClient, fake: FakeGraph, dataset: str) -> None:
    client.timeout = 0.2
    fake.fail_next(1, "timeout", delay=1.0)
    started = time.perf_counter()
    err = send_and_catch(client, dataset, events(2))
    assert time.perf_counter() - started < 1.0
    assert err.network
    assert err.http_status is None
    assert err.message == "timed out after 0.2s"
    assert classify(err) is RETRY
    assert client.send_events(dataset, TOKEN, events(2)).events_received == 2


def test_timeout_fault_can_accept_the_events_after_the_client_gave_up(
    client: GraphClient, fake: FakeGraph, dataset: str
) -> None:
    """Meta may have processed a batch whose answer never arrived: a resend then duplicates."""
    client.timeout = 0.1
    fake.fail_next(1, "timeout", delay=0.3, accept=True)
    assert send_and_catch(client, dataset, events(1)).network
    deadline = time.monotonic() + 5
    while not fake.accepted_event_ids() and time.monotonic() < deadline:
        time.sleep(0.02)  # waiting for the fake's thread, not testing time
    assert fake.accepted_event_ids() == {"evt-0": 1}


def test_stop_does_not_wait_for_a_pending_timeout_fault() -> None:
    with FakeGraph(valid_tokens={TOKEN}) as fake, GraphClient(fake.url, VERSION, timeout=0.1) as c:
        fake.fail_next(1, "timeout", delay=60)
        assert send_and_catch(c, fake.add_dataset(WABA), events(1)).network
        started = time.perf_counter()
        fake.stop()
        assert time.perf_counter() - started < 5


def test_reset_is_a_network_error(client: GraphClient, fake: FakeGraph, dataset: str) -> None:
    fake.fail_next(1, "reset")
    err = send_and_catch(client, dataset, events(2))
    assert err.network
    assert err.message.startswith("connection failed")
    assert classify(err) is RETRY
    assert client.send_events(dataset, TOKEN, events(2)).events_received == 2


def test_connection_refused_is_a_network_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with GraphClient(f"http://127.0.0.1:{port}", VERSION, timeout=2) as client:
        err = send_and_catch(client, "1", events(1))
    assert err.network
    assert err.message.startswith("connection failed")
    assert "object at 0x" not in err.message
    assert classify(err) is RETRY


def test_faults_are_consumed_in_order(client: GraphClient, fake: FakeGraph, dataset: str) -> None:
    fake.fail_next(2, "rate_limit", code=17)
    fake.fail_next(1, "token")
    codes = [send_and_catch(client, dataset, events(1)).code for _ in range(3)]
    assert codes == [17, 17, 190]
    assert fake.pending_faults() == 0


def test_unknown_fault_kind_is_refused(fake: FakeGraph) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        fake.fail_next(1, "meteor")


# -- tokens and permissions -----------------------------------------------------------------


def test_unknown_token_is_190_and_never_leaks(
    client: GraphClient, fake: FakeGraph, dataset: str
) -> None:
    with pytest.raises(GraphError) as caught:
        client.send_events(dataset, OTHER_TOKEN, events(1))
    err = caught.value
    assert (err.http_status, err.code, err.type) == (400, 190, "OAuthException")
    assert classify(err) is ACCOUNT
    assert_token_free(err)
    assert "set-token" in operator_message(err, waba_id=WABA)


def test_token_without_permission_is_200_and_403(fake: FakeGraph, dataset: str) -> None:
    fake.tokens_without_permission.add(TOKEN)
    with GraphClient(fake.url, VERSION) as client:
        err = send_and_catch(client, dataset, events(1))
    assert (err.http_status, err.code) == (403, 200)
    assert classify(err) is ACCOUNT


def test_token_is_redacted_if_an_answer_echoes_it() -> None:
    body = json.dumps({"error": {"message": f"bad {TOKEN}", "code": 190}}).encode()
    with StubSession(400, body) as session:
        client = GraphClient("https://graph.example", VERSION, session=session)
        err = send_and_catch(client, "1", events(1))
    assert "[redacted]" in err.message


# -- Meta-like validation: one bad event rejects the whole batch -----------------------------


def test_one_invalid_clid_rejects_the_whole_batch(
    client: GraphClient, fake: FakeGraph, dataset: str
) -> None:
    fake.invalid_clids.add("Aff-click-2")
    err = send_and_catch(client, dataset, events(5))
    assert (err.http_status, err.code, err.subcode) == (400, 100, 2804087)
    assert err.user_title == "Messaging Event Invalid Ctwa Clid"
    assert err.user_msg is not None
    assert "data[2]" in err.user_msg
    assert classify(err) is INVALID
    assert fake.events == []
    assert fake.batch_sizes() == [5]
    assert fake.batch_sizes(accepted_only=True) == []


@pytest.mark.parametrize(
    ("bad", "subcode", "expected"),
    [
        pytest.param({"event_name": "Lead"}, 2804066, INVALID, id="event-name"),
        pytest.param(
            {"user_data": {"whatsapp_business_account_id": WABA}}, 2804087, INVALID, id="no-clid"
        ),
        pytest.param({"action_source": "website"}, None, INVALID, id="action-source"),
        pytest.param({"messaging_channel": "sms"}, None, INVALID, id="messaging-channel"),
        pytest.param({"event_time": "yesterday"}, None, INVALID, id="event-time-type"),
        pytest.param(
            {"user_data": {"whatsapp_business_account_id": "999", "ctwa_clid": "Aff-x"}},
            2804132,
            ACCOUNT,
            id="waba-not-linked",
        ),
    ],
)
def test_invalid_event_rejects_batch(
    client: GraphClient,
    fake: FakeGraph,
    dataset: str,
    bad: dict[str, Any],
    subcode: int | None,
    expected: Disposition,
) -> None:
    batch = [event(0), event(1, **bad), event(2)]
    err = send_and_catch(client, dataset, batch)
    assert (err.http_status, err.code, err.subcode) == (400, 100, subcode)
    assert classify(err) is expected
    assert fake.events == []


def test_event_time_limit_follows_the_frozen_clock(
    client: GraphClient, fake: FakeGraph, dataset: str
) -> None:
    frozen = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)
    with freeze_time(frozen):
        recent = clock.to_unix(frozen - timedelta(days=6, hours=23))
        stale = clock.to_unix(frozen - timedelta(days=7, seconds=1))
        client.send_events(dataset, TOKEN, [event(0, event_time=recent)])
        err = send_and_catch(client, dataset, [event(1, event_time=stale)])
    assert (err.code, err.subcode) == (100, 2804003)
    assert classify(err) is INVALID
    assert list(fake.accepted_event_ids()) == ["evt-0"]


def test_strict_datasets_answer_100_33_for_unknown_dataset() -> None:
    with (
        FakeGraph(valid_tokens={TOKEN}, strict_datasets=True) as fake,
        GraphClient(fake.url, VERSION) as client,
    ):
        err = send_and_catch(client, "4242", events(1))
        assert (err.code, err.subcode) == (100, 33)
        assert classify(err) is ACCOUNT
        assert client.send_events(fake.add_dataset(WABA), TOKEN, events(1)).events_received == 1


def test_duplicates_are_visible_in_accepted_event_ids(
    client: GraphClient, fake: FakeGraph, dataset: str
) -> None:
    client.send_events(dataset, TOKEN, events(2))
    client.send_events(dataset, TOKEN, events(1))
    assert fake.accepted_event_ids()["evt-0"] == 2
    assert fake.batch_sizes(accepted_only=True) == [2, 1]


# -- dataset and subscription ---------------------------------------------------------------


def test_create_dataset_is_get_or_create(client: GraphClient, fake: FakeGraph) -> None:
    assert client.get_dataset(WABA, TOKEN) is None
    first = client.create_dataset(WABA, TOKEN, name="waconv")
    second = client.create_dataset(WABA, TOKEN)
    assert first == second == dataset_id_for(WABA)
    assert first.isdigit()
    assert client.get_dataset(WABA, TOKEN) == first
    assert fake.dataset_names[first] == "waconv"
    assert fake.requests[1]["json"] == {"dataset_name": "waconv"}
    assert client.create_dataset("5550001", TOKEN) != first
    # a created dataset is linked to its WABA: events of that WABA go through
    assert client.send_events(first, TOKEN, events(1)).events_received == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"id": "123"}, "123", id="id"),
        pytest.param({"data": [{"id": "456", "name": "x"}]}, "456", id="data-list"),
        pytest.param({"data": []}, None, id="empty-list"),
        pytest.param({}, None, id="empty-object"),
    ],
)
def test_get_dataset_accepts_both_shapes(body: dict[str, Any], expected: str | None) -> None:
    with StubSession(200, json.dumps(body).encode()) as session:
        client = GraphClient("https://graph.example", VERSION, session=session)
        assert client.get_dataset(WABA, TOKEN) == expected
        method, url, kwargs = session.calls[0]
    assert (method, url) == ("GET", f"https://graph.example/{VERSION}/{WABA}/dataset")
    assert kwargs["timeout"] == 30.0
    assert kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"


def test_subscribe_app(client: GraphClient, fake: FakeGraph) -> None:
    client.subscribe_app(WABA, TOKEN)
    assert fake.subscribed == {WABA}
    assert fake.requests[0]["path"] == f"/{VERSION}/{WABA}/subscribed_apps"


def test_subscribe_app_without_success_raises() -> None:
    with StubSession(200, b'{"success": false}') as session:
        client = GraphClient("https://graph.example", VERSION, session=session)
        with pytest.raises(GraphError, match="success"):
            client.subscribe_app(WABA, TOKEN)


def test_dataset_calls_classify_account_errors(fake: FakeGraph) -> None:
    fake.tokens_without_permission.add(TOKEN)
    with GraphClient(fake.url, VERSION) as client, pytest.raises(GraphError) as caught:
        client.create_dataset(WABA, TOKEN)
    assert classify(caught.value) is ACCOUNT
    line = operator_message(caught.value, waba_id=WABA, action="provision the dataset")
    assert line.startswith(f"cannot provision the dataset for WhatsApp Business Account {WABA}")


# -- answers the fake never gives -----------------------------------------------------------


class StubSession(requests.Session):
    """Answers every request with one canned response (or raises one exception)."""

    def __init__(
        self, status: int = 200, content: bytes = b"{}", exc: Exception | None = None
    ) -> None:
        super().__init__()
        self.status, self.content, self.exc = status, content, exc
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def request(  # type: ignore[override]
        self, method: str, url: str, **kwargs: Any
    ) -> requests.Response:
        self.calls.append((method, url, kwargs))
        if self.exc is not None:
            raise self.exc
        response = requests.Response()
        response.status_code = self.status
        response._content = self.content
        return response


def test_non_json_2xx_is_a_retryable_error() -> None:
    with StubSession(200, b"<html>ok</html>") as session:
        client = GraphClient("https://graph.example", VERSION, session=session)
        err = send_and_catch(client, "1", events(1))
    assert "non-JSON" in err.message
    assert classify(err) is RETRY


def test_chunked_encoding_error_is_a_network_error() -> None:
    exc = requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead")
    with StubSession(exc=exc) as session:
        client = GraphClient("https://graph.example", VERSION, session=session)
        err = send_and_catch(client, "1", events(1))
    assert err.network
    assert classify(err) is RETRY


def test_connection_error_drops_the_prepared_request() -> None:
    prepared = requests.Request(
        "POST", "https://graph.example/x", headers={"Authorization": f"Bearer {TOKEN}"}
    ).prepare()
    exc = requests.ConnectionError(f"boom {TOKEN}", request=prepared)
    with StubSession(exc=exc) as session:
        client = GraphClient("https://graph.example", VERSION, session=session)
        err = send_and_catch(client, "1", events(1))
    assert err.network
    assert err.__cause__ is None
    assert err.__suppress_context__


def test_the_environment_s_proxy_and_ca_settings_are_read_once_and_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """requests would read them again for every request; the client reads them when it is made
    and keeps them for the host it talks to."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "graph.internal")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    with GraphClient("https://graph.facebook.com", "v26.0") as meta:
        assert meta.session.proxies["https"] == "http://proxy.internal:3128"
        assert meta.session.verify == str(bundle)
        assert meta.session.trust_env is False
    with GraphClient("https://graph.internal", "v26.0") as bypassed:
        assert "https" not in bypassed.session.proxies
    monkeypatch.setenv("HTTPS_PROXY", "http://changed.internal:3128")
    with GraphClient("https://graph.facebook.com", "v26.0") as later:
        assert later.session.proxies["https"] == "http://changed.internal:3128"
