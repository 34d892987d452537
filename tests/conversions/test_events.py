from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from freezegun import freeze_time

from waconv.clock import to_unix, utcnow
from waconv.conversions.events import (
    EVENT_ID_LENGTH,
    EVENT_NAMES,
    FUTURE_SKEW,
    MAX_EVENT_AGE,
    InvalidConversion,
    automatic_event_custom_data,
    build_meta_event,
    event_id_for,
    order_custom_data,
    validate_conversion,
    validate_custom_data,
    validate_event_name,
    validate_event_time,
)

NOW = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)
CLID = "ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4Nx0-eM-GABDLOPaOdRM"


# --- event names ------------------------------------------------------------------------------


def test_event_names_are_metas_fourteen() -> None:
    assert len(EVENT_NAMES) == 14
    assert "LeadSubmitted" in EVENT_NAMES
    assert "Lead" not in EVENT_NAMES


@pytest.mark.parametrize("name", sorted(EVENT_NAMES))
def test_every_business_messaging_name_is_accepted(name: str) -> None:
    assert validate_event_name(name) == name


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("Lead", "LeadSubmitted"),
        ("CompleteRegistration", "LeadSubmitted"),
        ("purchase", "Purchase"),
        ("ADDTOCART", "AddToCart"),
    ],
)
def test_wrong_name_suggests_the_messaging_name(name: str, suggestion: str) -> None:
    with pytest.raises(InvalidConversion) as caught:
        validate_event_name(name)
    assert caught.value.field == "event_name"
    message = str(caught.value)
    assert f"event_name {name!r} is not a business-messaging event" in message
    assert f"did you mean {suggestion!r}" in message
    assert "use one of: AddToCart, CartAbandoned," in message


@pytest.mark.parametrize("name", ["Schedule", "", "Purchase "])
def test_unknown_name_lists_the_accepted_ones(name: str) -> None:
    with pytest.raises(InvalidConversion, match="use one of: AddToCart") as caught:
        validate_event_name(name)
    assert "did you mean" not in str(caught.value)


@pytest.mark.parametrize("name", [None, 3, ["Purchase"]])
def test_name_must_be_a_string(name: object) -> None:
    with pytest.raises(InvalidConversion, match="event_name must be a string") as caught:
        validate_event_name(name)
    assert caught.value.field == "event_name"


# --- event time -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "age",
    [timedelta(0), timedelta(hours=1), MAX_EVENT_AGE - timedelta(seconds=1), MAX_EVENT_AGE],
)
def test_times_within_seven_days_pass_unchanged(age: timedelta) -> None:
    assert validate_event_time(NOW - age, NOW) == NOW - age


def test_older_than_seven_days_is_refused() -> None:
    with pytest.raises(InvalidConversion, match="more than 7 days old") as caught:
        validate_event_time(NOW - MAX_EVENT_AGE - timedelta(seconds=1), NOW)
    assert caught.value.field == "event_time"


@pytest.mark.parametrize("ahead", [timedelta(seconds=1), FUTURE_SKEW])
def test_slightly_ahead_is_clamped_to_now(ahead: timedelta) -> None:
    assert validate_event_time(NOW + ahead, NOW) == NOW


def test_beyond_the_skew_is_refused() -> None:
    with pytest.raises(InvalidConversion, match="in the future") as caught:
        validate_event_time(NOW + FUTURE_SKEW + timedelta(seconds=1), NOW)
    assert caught.value.field == "event_time"


def test_other_timezones_compare_by_instant() -> None:
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2026, 3, 2, 13, 0, 0, tzinfo=plus_two)  # 11:00 UTC
    assert validate_event_time(moment, NOW) == moment


def test_naive_time_is_refused() -> None:
    with pytest.raises(InvalidConversion, match="timezone-aware") as caught:
        validate_event_time(datetime(2026, 3, 2, 11, 0, 0), NOW)
    assert caught.value.field == "event_time"


def test_seven_day_boundary_with_the_frozen_clock() -> None:
    clicked = datetime(2026, 3, 1, 9, 30, 0, tzinfo=UTC)
    with freeze_time(clicked + MAX_EVENT_AGE - timedelta(seconds=1)):
        assert validate_event_time(clicked, utcnow()) == clicked
    with (
        freeze_time(clicked + MAX_EVENT_AGE + timedelta(seconds=1)),
        pytest.raises(InvalidConversion, match="more than 7 days old"),
    ):
        validate_event_time(clicked, utcnow())


# --- custom_data ------------------------------------------------------------------------------


def test_none_is_fine_except_for_purchase() -> None:
    assert validate_custom_data("LeadSubmitted", None) is None
    with pytest.raises(InvalidConversion, match="required for a Purchase") as caught:
        validate_custom_data("Purchase", None)
    assert caught.value.field == "custom_data"


@pytest.mark.parametrize("data", [[], "x", 3, True])
def test_custom_data_must_be_an_object(data: object) -> None:
    with pytest.raises(InvalidConversion, match="must be a JSON object") as caught:
        validate_custom_data("LeadSubmitted", data)
    assert caught.value.field == "custom_data"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"currency": "USD"}, "custom_data.value"),
        ({"value": 10}, "custom_data.currency"),
        ({}, "custom_data.value"),
    ],
)
def test_purchase_needs_value_and_currency(data: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidConversion) as caught:
        validate_custom_data("Purchase", data)
    assert caught.value.field == field


def test_purchase_normalized() -> None:
    data = {"value": 23.97, "currency": "usd", "order_id": "A-1"}
    assert validate_custom_data("Purchase", data) == {
        "value": 23.97,
        "currency": "USD",
        "order_id": "A-1",
    }
    assert data["currency"] == "usd", "the input is not changed"


def test_partial_purchase_data_can_be_checked_without_the_purchase_requirement() -> None:
    assert validate_custom_data("Purchase", None, require_purchase_fields=False) is None
    assert validate_custom_data(
        "Purchase", {"content_type": "product"}, require_purchase_fields=False
    ) == {"content_type": "product"}


def test_value_without_currency_is_refused_for_any_event() -> None:
    with pytest.raises(InvalidConversion, match=r"needs custom_data\.currency") as caught:
        validate_custom_data("LeadSubmitted", {"value": 5})
    assert caught.value.field == "custom_data.currency"


def test_currency_alone_is_fine() -> None:
    assert validate_custom_data("ViewContent", {"currency": "eur"}) == {"currency": "EUR"}


VALID_FULL: dict[str, Any] = {
    "value": 0,
    "currency": "BRL",
    "content_ids": ["sku-1", "sku-2"],
    "content_type": "product_group",
    "contents": [
        {"id": "sku-1", "quantity": 2, "item_price": 7.99, "delivery_category": "curbside"},
        {"id": "sku-2", "title": "custom keys inside contents pass through"},
    ],
    "content_name": "Shoes",
    "content_category": "Footwear",
    "num_items": 0,
    "order_id": "ord-9",
    "delivery_category": "home_delivery",
    "net_revenue": -1.5,
    "predicted_ltv": 120,
    "status": "paid",
    "my_flag": True,
    "my_list": [1, "two", None],
    "my_object": {"nested": {"deep": 1}},
}


def test_every_documented_key_with_a_good_value_passes() -> None:
    result = validate_custom_data("InitiateCheckout", VALID_FULL)
    assert result == VALID_FULL
    assert result is not VALID_FULL
    assert result["contents"][0] is not VALID_FULL["contents"][0], "a deep copy"


@pytest.mark.parametrize(
    ("data", "field", "says"),
    [
        ({"value": "10", "currency": "USD"}, "custom_data.value", "JSON number, not a string"),
        ({"value": True, "currency": "USD"}, "custom_data.value", "not a boolean"),
        ({"value": None, "currency": "USD"}, "custom_data.value", "not null"),
        ({"value": Decimal("1"), "currency": "USD"}, "custom_data.value", "JSON number"),
        ({"value": math.nan, "currency": "USD"}, "custom_data.value", "finite"),
        ({"value": math.inf, "currency": "USD"}, "custom_data.value", "finite"),
        ({"value": -0.01, "currency": "USD"}, "custom_data.value", ">= 0"),
        ({"value": 1, "currency": "US"}, "custom_data.currency", "3-letter"),
        ({"value": 1, "currency": "USDX"}, "custom_data.currency", "3-letter"),
        ({"value": 1, "currency": "US1"}, "custom_data.currency", "3-letter"),
        ({"value": 1, "currency": "USD\n"}, "custom_data.currency", "3-letter"),
        ({"value": 1, "currency": 840}, "custom_data.currency", "3-letter"),
        ({"content_ids": "sku-1"}, "custom_data.content_ids", "list of strings"),
        ({"content_ids": ["a", 2]}, "custom_data.content_ids[1]", "non-empty string"),
        ({"content_ids": [""]}, "custom_data.content_ids[0]", "non-empty string"),
        ({"content_type": "service"}, "custom_data.content_type", "product, product_group"),
        ({"contents": {"id": "a"}}, "custom_data.contents", "list of objects"),
        ({"contents": ["a"]}, "custom_data.contents[0]", "object with an 'id'"),
        ({"contents": [{"quantity": 1}]}, "custom_data.contents[0].id", "is required"),
        ({"contents": [{"id": 5}]}, "custom_data.contents[0].id", "non-empty string"),
        ({"contents": [{"id": "a", "quantity": 0}]}, "custom_data.contents[0].quantity", ">= 1"),
        (
            {"contents": [{"id": "a", "quantity": 1.5}]},
            "custom_data.contents[0].quantity",
            "JSON integer",
        ),
        (
            {"contents": [{"id": "a", "quantity": True}]},
            "custom_data.contents[0].quantity",
            "not a boolean",
        ),
        (
            {"contents": [{"id": "a"}, {"id": "b", "item_price": "7.99"}]},
            "custom_data.contents[1].item_price",
            "JSON number",
        ),
        (
            {"contents": [{"id": "a", "delivery_category": "drone"}]},
            "custom_data.contents[0].delivery_category",
            "curbside, home_delivery, in_store",
        ),
        ({"content_name": 3}, "custom_data.content_name", "non-empty string"),
        ({"content_category": ""}, "custom_data.content_category", "non-empty string"),
        ({"num_items": -1}, "custom_data.num_items", ">= 0"),
        ({"num_items": 2.0}, "custom_data.num_items", "JSON integer"),
        ({"order_id": 123}, "custom_data.order_id", "non-empty string"),
        ({"delivery_category": "mail"}, "custom_data.delivery_category", "in_store"),
        ({"net_revenue": "5"}, "custom_data.net_revenue", "JSON number"),
        ({"predicted_ltv": False}, "custom_data.predicted_ltv", "not a boolean"),
        ({"status": None}, "custom_data.status", "non-empty string"),
    ],
)
def test_documented_keys_must_have_documented_types(
    data: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(InvalidConversion) as caught:
        validate_custom_data("AddToCart", data)
    assert caught.value.field == field
    assert says in str(caught.value)
    assert field in str(caught.value)


def test_validate_conversion_checks_the_name_first() -> None:
    with pytest.raises(InvalidConversion) as caught:
        validate_conversion("Lead", NOW - timedelta(days=30), "junk", NOW)
    assert caught.value.field == "event_name"


def test_validate_conversion_then_time_then_data() -> None:
    with pytest.raises(InvalidConversion) as caught:
        validate_conversion("Purchase", NOW - timedelta(days=30), None, NOW)
    assert caught.value.field == "event_time"
    with pytest.raises(InvalidConversion) as caught:
        validate_conversion("Purchase", NOW, None, NOW)
    assert caught.value.field == "custom_data"


def test_validate_conversion_returns_clamped_time_and_normalized_data() -> None:
    moment, data = validate_conversion(
        "Purchase", NOW + timedelta(seconds=30), {"value": 5, "currency": "gbp"}, NOW
    )
    assert moment == NOW
    assert data == {"value": 5, "currency": "GBP"}
    assert validate_conversion("LeadSubmitted", NOW, None, NOW) == (NOW, None)


# --- event ids --------------------------------------------------------------------------------


def test_event_id_is_deterministic_short_and_url_safe() -> None:
    first = event_id_for("asked-for-price", "conv-1", "ARAkclid")
    assert first == event_id_for("asked-for-price", "conv-1", "ARAkclid")
    assert len(first) == EVENT_ID_LENGTH == 32
    assert all(c in "0123456789abcdef" for c in first)


def test_event_id_is_pinned() -> None:
    # sha256("a\x1fb")[:32]: a stored conversion must keep its id across releases.
    assert event_id_for("a", "b") == "f04cdced9736a69da6103f08a4daaf8c"


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("a", "bc"), ("ab", "c")),
        (("a", "b"), ("b", "a")),
        (("a",), ("a", "")),
    ],
)
def test_different_parts_give_different_ids(left: tuple[str, ...], right: tuple[str, ...]) -> None:
    assert event_id_for(*left) != event_id_for(*right)


def test_event_id_refuses_ambiguous_parts() -> None:
    with pytest.raises(ValueError, match="separator"):
        event_id_for("a\x1fb")
    with pytest.raises(ValueError, match="at least one"):
        event_id_for()
    with pytest.raises(TypeError, match="strings"):
        event_id_for("a", 1)  # type: ignore[arg-type]


# --- orders -----------------------------------------------------------------------------------


def _item(pid: str, quantity: Any, price: Any, currency: Any = "USD") -> dict[str, Any]:
    return {
        "product_retailer_id": pid,
        "quantity": quantity,
        "item_price": price,
        "currency": currency,
    }


def test_order_total_is_exact_decimal() -> None:
    data = order_custom_data([_item("di9ozbzfi4", 3, 7.99)])
    assert data == {
        "value": 23.97,
        "currency": "USD",
        "contents": [{"id": "di9ozbzfi4", "quantity": 3, "item_price": 7.99}],
        "num_items": 3,
    }
    assert json.dumps(data["value"]) == "23.97"


def test_order_point_one_plus_point_two_is_point_three() -> None:
    data = order_custom_data([_item("a", 1, 0.1), _item("b", 1, 0.2, "usd")])
    assert json.dumps(data["value"]) == "0.3"
    assert data["currency"] == "USD"
    assert data["num_items"] == 2


def test_order_of_many_lines_sums_quantities_and_amounts() -> None:
    items = [_item("a", 2, 7.99), _item("b", 1, 100), _item("c", 5, "0.05")]
    data = order_custom_data(items)
    assert Decimal(repr(data["value"])) == Decimal("116.23")
    assert data["num_items"] == 8
    assert [c["id"] for c in data["contents"]] == ["a", "b", "c"]
    assert data["contents"][2]["item_price"] == 0.05


def test_order_accepts_numbers_meta_sends_as_strings() -> None:
    data = order_custom_data([_item("a", "2", "7.99")])
    assert data["value"] == 15.98
    assert data["contents"] == [{"id": "a", "quantity": 2, "item_price": 7.99}]


def test_order_free_item() -> None:
    assert order_custom_data([_item("gift", 1, 0)])["value"] == 0.0


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([], "product_items"),
        ("nope", "product_items"),
        (["x"], "product_items[0]"),
        ([_item("", 1, 1)], "product_items[0].product_retailer_id"),
        (
            [{"quantity": 1, "item_price": 1, "currency": "USD"}],
            "product_items[0].product_retailer_id",
        ),
        ([_item("a", 0, 1)], "product_items[0].quantity"),
        ([_item("a", -1, 1)], "product_items[0].quantity"),
        ([_item("a", 1.5, 1)], "product_items[0].quantity"),
        ([_item("a", True, 1)], "product_items[0].quantity"),
        ([_item("a", "²", 1)], "product_items[0].quantity"),
        ([_item("a", None, 1)], "product_items[0].quantity"),
        ([_item("a", 1, None)], "product_items[0].item_price"),
        ([_item("a", 1, True)], "product_items[0].item_price"),
        ([_item("a", 1, "abc")], "product_items[0].item_price"),
        ([_item("a", 1, "NaN")], "product_items[0].item_price"),
        ([_item("a", 1, math.inf)], "product_items[0].item_price"),
        ([_item("a", 1, -2)], "product_items[0].item_price"),
        ([_item("a", 1, 1, "dollars")], "product_items[0].currency"),
        ([_item("a", 1, 1, None)], "product_items[0].currency"),
        ([_item("a", 1, 1, "USD"), _item("b", 1, 1, "EUR")], "product_items[1].currency"),
        ([_item("a", 1, "1e15")], "product_items[0].item_price"),
        ([_item("a", 10**14, 10)], "product_items"),
    ],
)
def test_bad_order_items_name_the_item_and_key(items: Any, field: str) -> None:
    with pytest.raises(InvalidConversion) as caught:
        order_custom_data(items)
    assert caught.value.field == field


def test_mixed_currencies_say_which() -> None:
    with pytest.raises(InvalidConversion, match="'EUR' differs from 'USD'"):
        order_custom_data([_item("a", 1, 1, "usd"), _item("b", 1, 1, "eur")])


def test_order_data_passes_purchase_validation() -> None:
    data = order_custom_data([_item("a", 3, 7.99)])
    assert validate_custom_data("Purchase", data) == data


# --- automatic events -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scaled", "value"),
    [(25000, 25.0), (23970, 23.97), (1, 0.001), (0, 0.0), ("25000", 25.0), (12345.0, 12.345)],
)
def test_automatic_event_value_is_divided_by_1000(scaled: Any, value: float) -> None:
    data = automatic_event_custom_data({"currency": "usd", "value": scaled})
    assert data == {"currency": "USD", "value": value}


def test_automatic_event_keeps_other_keys_and_copies() -> None:
    given = {"currency": "BRL", "value": 99900, "extra": [1]}
    data = automatic_event_custom_data(given)
    assert data == {"currency": "BRL", "value": 99.9, "extra": [1]}
    assert data is not None
    assert data["extra"] is not given["extra"]
    assert given["value"] == 99900


def test_automatic_event_without_custom_data() -> None:
    assert automatic_event_custom_data(None) is None
    assert automatic_event_custom_data({}) == {}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"value": "lots", "currency": "USD"}, "custom_data.value"),
        ({"value": -5, "currency": "USD"}, "custom_data.value"),
        ({"value": 1000, "currency": "$"}, "custom_data.currency"),
        ([], "custom_data"),
    ],
)
def test_automatic_event_bad_data(data: Any, field: str) -> None:
    with pytest.raises(InvalidConversion) as caught:
        automatic_event_custom_data(data)
    assert caught.value.field == field


# --- the event Meta receives ------------------------------------------------------------------


def _event(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": NOW,
        "event_id": "abc123",
        "waba_id": "102290129340398",
        "ctwa_clid": CLID,
        "custom_data": {"currency": "USD", "value": 123},
        "extra": None,
        "ldu": False,
        "ldu_country": 0,
        "ldu_state": 0,
    }
    arguments.update(overrides)
    return build_meta_event(**arguments)


def test_meta_event_shape_without_ldu() -> None:
    assert _event() == {
        "event_name": "Purchase",
        "event_time": to_unix(NOW),
        "event_id": "abc123",
        "action_source": "business_messaging",
        "messaging_channel": "whatsapp",
        "user_data": {
            "whatsapp_business_account_id": "102290129340398",
            "ctwa_clid": CLID,
        },
        "custom_data": {"currency": "USD", "value": 123},
    }


def test_meta_event_time_is_integer_unix_seconds() -> None:
    event = _event(event_time=NOW + timedelta(microseconds=999_999))
    assert event["event_time"] == 1772452800
    assert type(event["event_time"]) is int


def test_meta_event_with_ldu() -> None:
    event = _event(ldu=True, ldu_country=1, ldu_state=1000)
    assert event["data_processing_options"] == ["LDU"]
    assert event["data_processing_options_country"] == 1
    assert event["data_processing_options_state"] == 1000


def test_meta_event_with_ldu_geolocated_by_meta() -> None:
    event = _event(ldu=True)
    assert event["data_processing_options"] == ["LDU"]
    assert event["data_processing_options_country"] == 0
    assert event["data_processing_options_state"] == 0


def test_meta_event_without_ldu_has_no_ldu_key() -> None:
    assert not [key for key in _event(ldu_country=1, ldu_state=1000) if "data_processing" in key]


@pytest.mark.parametrize("custom_data", [None, {}])
def test_meta_event_without_custom_data(custom_data: Any) -> None:
    assert "custom_data" not in _event(event_name="LeadSubmitted", custom_data=custom_data)


def test_meta_event_extra_keys_are_merged() -> None:
    outcome = {"outcome_type": "automatic_events"}
    event = _event(extra={"messaging_outcome_data": outcome, "opt_out": True})
    assert event["messaging_outcome_data"] == outcome
    assert event["opt_out"] is True


def test_meta_event_extra_user_data_adds_hashed_fields_but_never_replaces_the_ids() -> None:
    digest = "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
    extra = {
        "user_data": {"ph": digest, "ctwa_clid": "forged", "whatsapp_business_account_id": "1"}
    }
    event = _event(extra=extra)
    plain = _event()
    assert event["user_data"] == {**plain["user_data"], "ph": digest}
    assert "user_data" in extra  # the stored extra is not changed


@pytest.mark.parametrize("key", ["event_time", "user_data", "data_processing_options"])
def test_meta_event_extra_may_not_override(key: str) -> None:
    with pytest.raises(ValueError, match=key):
        _event(extra={key: "x"})


def test_meta_event_is_json() -> None:
    event = _event(ldu=True, extra={"messaging_outcome_data": {"outcome_type": "x"}})
    assert json.loads(json.dumps(event)) == event
