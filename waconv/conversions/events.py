"""Conversion events as pure functions: validation, amounts, ids, and the JSON Meta receives.

Nothing here touches the database, the network or the clock: callers pass ``now`` (read from
``waconv.clock.utcnow()``), so the same rules serve the admin API, the rules engine and the
dispatcher, and tests drive them with freezegun.

Two kinds of input reach these functions, and they are treated differently on purpose:

* what an operator sends (admin API, rules file) is checked strictly: JSON numbers only,
  because a string where a number belongs is a mistake the operator can fix;
* what Meta's webhooks send (order items, automatic events) is read leniently where Meta's docs
  and its payloads disagree (numbers that may arrive as strings), because the customer's action
  happened and refusing it would lose the conversion.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import orjson

from waconv.clock import to_unix
from waconv.conversions.currencies import ACTIVE_CODES

# Meta's list for action_source=business_messaging (meta-api.md §3.4); any other name, `Lead`
# included, is refused with 100/2804066 and takes the whole batch down with it.
EVENT_NAMES: frozenset[str] = frozenset(
    {
        "Purchase",
        "LeadSubmitted",
        "InitiateCheckout",
        "AddToCart",
        "ViewContent",
        "OrderCreated",
        "OrderShipped",
        "OrderDelivered",
        "OrderCanceled",
        "OrderReturned",
        "CartAbandoned",
        "QualifiedLead",
        "RatingProvided",
        "ReviewProvided",
    }
)
_SORTED_EVENT_NAMES = ", ".join(sorted(EVENT_NAMES))
# Web-pixel names people reach for out of habit, and the messaging name that means the same.
_SUGGESTIONS: Mapping[str, str] = {
    "Lead": "LeadSubmitted",
    "CompleteRegistration": "LeadSubmitted",
    "Contact": "LeadSubmitted",
    "SubmitApplication": "LeadSubmitted",
    "Checkout": "InitiateCheckout",
}

MAX_EVENT_AGE = timedelta(days=7)  # Meta rejects the whole request when one event is older
FUTURE_SKEW = timedelta(seconds=60)  # tolerance for clocks (ours, Meta's webhook timestamps)

CONTENT_TYPES = frozenset({"product", "product_group"})
DELIVERY_CATEGORIES = frozenset({"in_store", "curbside", "home_delivery"})
_CURRENCY = re.compile(r"[A-Za-z]{3}")
# Order totals are sent with the currency's minor unit when they cannot be sent exactly; two
# decimals is the minor unit of nearly every catalog currency (see _json_number).
_CENTS = Decimal("0.01")
# Meta's automatic_events webhook sends purchase values multiplied by 1000 (meta-api.md §1.6).
AUTOMATIC_EVENT_VALUE_SCALE = Decimal(1000)
# A float carries 15 significant digits exactly; no real order comes near 10^15 of anything,
# so a larger amount from a webhook is refused rather than sent rounded or as infinity.
MAX_AMOUNT_DIGITS = 15
_DIGITS = re.compile(r"[0-9]+")
_EVENT_ID_SEPARATOR = "\x1f"  # ASCII unit separator: cannot appear in names, ids or wamids
EVENT_ID_LENGTH = 32  # hex chars = 128 bits of sha256: collision-free at any realistic volume

# Keys build_meta_event owns; `extra` must not override them (a stray `event_time` in extra
# would silently send a different time than the one validated).
_RESERVED_EVENT_KEYS = frozenset(
    {
        "event_name",
        "event_time",
        "event_id",
        "action_source",
        "messaging_channel",
        "user_data",
        "custom_data",
        "data_processing_options",
        "data_processing_options_country",
        "data_processing_options_state",
    }
)


class InvalidConversion(ValueError):
    """A conversion Meta would refuse; ``field`` names the part that is wrong.

    ``field`` uses dotted paths: ``event_name``, ``event_time``, ``custom_data``,
    ``custom_data.value``, ``custom_data.contents[2].quantity``, ``product_items[0].currency``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# --- validation -------------------------------------------------------------------------------


def validate_event_name(name: object) -> str:
    """Return ``name`` when it is one of the 14 business-messaging names, else raise."""
    if not isinstance(name, str):
        raise InvalidConversion(
            "event_name",
            f"event_name must be a string, not {json_type(name)}; "
            f"use one of: {_SORTED_EVENT_NAMES}",
        )
    if name in EVENT_NAMES:
        return name
    hint = _SUGGESTIONS.get(name)
    if hint is None:
        hint = next((n for n in EVENT_NAMES if n.casefold() == name.casefold()), None)
    suggestion = f" (did you mean {hint!r}?)" if hint else ""
    raise InvalidConversion(
        "event_name",
        f"event_name {name!r} is not a business-messaging event{suggestion}; "
        f"use one of: {_SORTED_EVENT_NAMES}",
    )


def validate_event_time(
    moment: datetime, now: datetime, *, future_skew: timedelta = FUTURE_SKEW
) -> datetime:
    """Return ``moment`` in the window Meta accepts, clamped to ``now`` when slightly ahead.

    Accepted: from ``now - MAX_EVENT_AGE`` (inclusive) to ``now + future_skew`` (inclusive).
    A time ahead of ``now`` within the skew comes back as ``now``: Meta does not document
    future times, so none is ever sent. The default skew is for clocks (ours, Meta's message
    timestamps); an operator's input gets none. Both datetimes must be timezone-aware.
    """
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise InvalidConversion(
            "event_time", "event_time must be a timezone-aware datetime (unix seconds in requests)"
        )
    if now - moment > MAX_EVENT_AGE:
        raise InvalidConversion(
            "event_time",
            f"event_time {moment.isoformat()} is more than {MAX_EVENT_AGE.days} days old; "
            f"Meta accepts events from {(now - MAX_EVENT_AGE).isoformat()} on",
        )
    if moment > now:
        if moment - now > future_skew:
            raise InvalidConversion(
                "event_time",
                f"event_time {moment.isoformat()} is in the future; it must be the time the "
                f"customer acted, at most now ({now.isoformat()})",
            )
        return now
    return moment


def validate_custom_data(
    event_name: str,
    custom_data: object,
    *,
    require_purchase_fields: bool = True,
) -> dict[str, Any] | None:
    """Check Meta's standard ``custom_data`` keys and return a normalized deep copy.

    ``None`` stays ``None`` (except for a Purchase). Normalization: ``currency`` (top level)
    is upper-cased; everything else is copied as given. Keys Meta does not define are allowed
    (custom properties) and passed through untouched.

    ``require_purchase_fields=False`` skips only the "Purchase needs value and currency" check,
    for partial custom_data that is completed later (a rule's defaults merged with an order's
    computed total).
    """
    if custom_data is None:
        if event_name == "Purchase" and require_purchase_fields:
            raise InvalidConversion(
                "custom_data",
                "custom_data is required for a Purchase: give a numeric 'value' and a "
                '3-letter \'currency\', e.g. {"value": 23.97, "currency": "USD"}',
            )
        return None
    if not isinstance(custom_data, dict):
        raise InvalidConversion(
            "custom_data", f"custom_data must be a JSON object, not {json_type(custom_data)}"
        )
    data: dict[str, Any] = copy.deepcopy(custom_data)
    for key, value in data.items():
        if not isinstance(key, str):
            raise InvalidConversion("custom_data", f"custom_data keys must be strings: {key!r}")
        check = _CUSTOM_DATA_CHECKS.get(key)
        if check is not None:
            data[key] = check(f"custom_data.{key}", value)
    if "value" in data and "currency" not in data:
        raise InvalidConversion(
            "custom_data.currency",
            "custom_data.value needs custom_data.currency (a 3-letter ISO 4217 code such as "
            "'USD'): Meta reads a value only together with its currency",
        )
    if event_name == "Purchase" and require_purchase_fields:
        for key, accepted in (("value", "a number >= 0"), ("currency", "a 3-letter code")):
            if key not in data:
                raise InvalidConversion(
                    f"custom_data.{key}",
                    f"a Purchase needs custom_data.{key} ({accepted}); Meta refuses it without",
                )
    return data


def validate_conversion(
    event_name: object,
    event_time: datetime,
    custom_data: object,
    now: datetime,
) -> tuple[datetime, dict[str, Any] | None]:
    """All three checks, name first; returns ``(event_time, custom_data)`` normalized."""
    name = validate_event_name(event_name)
    moment = validate_event_time(event_time, now)
    return moment, validate_custom_data(name, custom_data)


def _number(field: str, value: object, *, minimum: float | None = None) -> int | float:
    # bool is an int subclass in Python, and `true` is not an amount.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidConversion(
            field, f"{field} must be a JSON number, not {json_type(value)} ({value!r})"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidConversion(field, f"{field} must be a finite number, not {value!r}")
    if minimum is not None and value < minimum:
        raise InvalidConversion(field, f"{field} must be >= {minimum:g}, not {value!r}")
    return value


def _integer(field: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConversion(
            field, f"{field} must be a JSON integer, not {json_type(value)} ({value!r})"
        )
    if value < minimum:
        raise InvalidConversion(field, f"{field} must be >= {minimum}, not {value!r}")
    return value


def _string(field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidConversion(
            field, f"{field} must be a non-empty string, not {json_type(value)} ({value!r})"
        )
    return value


def _one_of(field: str, value: object, accepted: frozenset[str]) -> str:
    if not isinstance(value, str) or value not in accepted:
        raise InvalidConversion(
            field, f"{field} {value!r} is not accepted; use one of: {', '.join(sorted(accepted))}"
        )
    return value


def _currency(field: str, value: object) -> str:
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise InvalidConversion(
            field, f"{field} must be a 3-letter ISO 4217 code such as 'USD', not {value!r}"
        )
    if value.upper() not in ACTIVE_CODES:
        raise InvalidConversion(
            field, f"{field} {value!r} is not an active ISO 4217 currency code (e.g. 'USD')"
        )
    return value.upper()


def _value(field: str, value: object) -> int | float:
    return _number(field, value, minimum=0)


def _any_number(field: str, value: object) -> int | float:
    return _number(field, value)


def _num_items(field: str, value: object) -> int:
    return _integer(field, value, minimum=0)


def _content_ids(field: str, value: object) -> list[str]:
    if not isinstance(value, list):
        raise InvalidConversion(field, f"{field} must be a list of strings, not {json_type(value)}")
    return [_string(f"{field}[{i}]", item) for i, item in enumerate(value)]


def _delivery_category(field: str, value: object) -> str:
    return _one_of(field, value, DELIVERY_CATEGORIES)


def _content_type(field: str, value: object) -> str:
    return _one_of(field, value, CONTENT_TYPES)


def _contents(field: str, value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise InvalidConversion(
            field, f"{field} must be a list of objects with an 'id', not {json_type(value)}"
        )
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise InvalidConversion(
                where, f"{where} must be an object with an 'id', not {json_type(item)}"
            )
        if "id" not in item:
            raise InvalidConversion(f"{where}.id", f"{where}.id is required (the product id)")
        item["id"] = _string(f"{where}.id", item["id"])
        for key, check in _CONTENT_CHECKS.items():
            if key in item:
                item[key] = check(f"{where}.{key}", item[key])
    return value


def _quantity(field: str, value: object) -> int:
    return _integer(field, value, minimum=1)


_Check = Callable[[str, Any], Any]

_CONTENT_CHECKS: Mapping[str, _Check] = {
    "quantity": _quantity,
    "item_price": _any_number,
    "delivery_category": _delivery_category,
}

# Meta's standard custom_data parameters (meta-api.md §3.5) and what each must be.
_CUSTOM_DATA_CHECKS: Mapping[str, _Check] = {
    "value": _value,
    "currency": _currency,
    "content_ids": _content_ids,
    "content_type": _content_type,
    "contents": _contents,
    "content_name": _string,
    "content_category": _string,
    "num_items": _num_items,
    "order_id": _string,
    "delivery_category": _delivery_category,
    "net_revenue": _any_number,
    "predicted_ltv": _any_number,
    "status": _string,
}


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# --- ids --------------------------------------------------------------------------------------


def event_id_for(*parts: str) -> str:
    """A stable event id: the first 32 hex chars of sha256 over the parts joined by ``\\x1f``.

    The same parts always give the same id, so a conversion re-created after a crash or a
    webhook redelivery carries the id it had. A part may not contain ``\\x1f`` (it would let
    ``("a\\x1fb",)`` collide with ``("a", "b")``).
    """
    if not parts:
        raise ValueError("event_id_for needs at least one part")
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"event_id_for parts must be strings, not {type(part).__name__}")
        if _EVENT_ID_SEPARATOR in part:
            raise ValueError("event_id_for parts may not contain the \\x1f separator")
    digest = hashlib.sha256(_EVENT_ID_SEPARATOR.join(parts).encode("utf-8")).hexdigest()
    return digest[:EVENT_ID_LENGTH]


# --- amounts from webhooks --------------------------------------------------------------------


def order_custom_data(product_items: list[dict[str, Any]]) -> dict[str, Any]:
    """custom_data for a WhatsApp ``order`` message, computed exactly in Decimal.

    Returns ``value`` (Σ item_price * quantity), ``currency`` (the items' currency, upper
    case), ``contents`` (``[{"id", "quantity", "item_price"}]``) and ``num_items`` (Σ quantity).

    Amounts: each price is read as ``Decimal(str(price))`` so a JSON ``7.99`` is 7.99, not the
    binary float below it; the sum is exact (3 * 7.99 = 23.97, 0.1 + 0.2 = 0.3). It leaves as a
    JSON number (a Python ``float``) whose shortest repr is exactly that decimal — true of any
    realistic total (fewer than 15 significant digits). Only a total that a float cannot carry
    exactly is rounded half-up to 2 decimals first, the minor unit Meta's ``value`` means.

    Prices and quantities that arrive as numeric strings are accepted (Meta documents
    ``item_price`` as Integer while sending 7.99). Raises InvalidConversion, with
    ``field = "product_items[i].<key>"``, for anything else, and when items disagree on currency.
    """
    if not isinstance(product_items, list) or not product_items:
        raise InvalidConversion("product_items", "an order needs a non-empty list of product_items")
    total = Decimal(0)
    num_items = 0
    currency: str | None = None
    contents: list[dict[str, Any]] = []
    for i, item in enumerate(product_items):
        where = f"product_items[{i}]"
        if not isinstance(item, dict):
            raise InvalidConversion(where, f"{where} must be an object, not {json_type(item)}")
        product_id = _string(f"{where}.product_retailer_id", item.get("product_retailer_id"))
        quantity = _webhook_quantity(f"{where}.quantity", item.get("quantity"))
        price = _webhook_decimal(f"{where}.item_price", item.get("item_price"))
        item_currency = _currency(f"{where}.currency", item.get("currency"))
        if currency is None:
            currency = item_currency
        elif item_currency != currency:
            raise InvalidConversion(
                f"{where}.currency",
                f"{where}.currency {item_currency!r} differs from {currency!r} of the items "
                "before it; an order's value needs one currency",
            )
        total += price * quantity
        num_items += quantity
        contents.append(
            {
                "id": product_id,
                "quantity": quantity,
                "item_price": _json_number(f"{where}.item_price", price),
            }
        )
    return {
        "value": _json_number("product_items", total),
        "currency": currency,
        "contents": contents,
        "num_items": num_items,
    }


def automatic_event_custom_data(custom_data: dict[str, Any] | None) -> dict[str, Any] | None:
    """custom_data of a Meta ``automatic_events`` webhook entry, ready for the Conversions API.

    Meta's webhook carries a purchase ``value`` multiplied by 1000 (25000 means 25.00); it is
    divided back in Decimal. ``currency`` is upper-cased; other keys are copied as given.
    ``None`` (LeadSubmitted carries no custom_data) stays ``None``.
    """
    if custom_data is None:
        return None
    if not isinstance(custom_data, dict):
        raise InvalidConversion(
            "custom_data", f"custom_data must be a JSON object, not {json_type(custom_data)}"
        )
    data = copy.deepcopy(custom_data)
    if "value" in data:
        scaled = _webhook_decimal("custom_data.value", data["value"])
        data["value"] = _json_number("custom_data.value", scaled / AUTOMATIC_EVENT_VALUE_SCALE)
    if "currency" in data:
        data["currency"] = _currency("custom_data.currency", data["currency"])
    return data


def _webhook_decimal(field: str, value: object) -> Decimal:
    # str() first: Decimal(7.99) would be 7.98999999999999932498...
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidConversion(field, f"{field} must be a number, not {json_type(value)}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidConversion(field, f"{field} must be a number, not {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise InvalidConversion(field, f"{field} must be a finite number >= 0, not {value!r}")
    # "1e999999999" is a finite Decimal whose first product overflows the arithmetic.
    if amount.adjusted() >= MAX_AMOUNT_DIGITS:
        raise InvalidConversion(
            field, f"{field} has more than {MAX_AMOUNT_DIGITS} digits before the point"
        )
    return amount


def _webhook_quantity(field: str, value: object) -> int:
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        if len(value.strip()) > MAX_AMOUNT_DIGITS:
            raise InvalidConversion(field, f"{field} has more than {MAX_AMOUNT_DIGITS} digits")
        value = int(value)
    return _integer(field, value, minimum=1)


def _json_number(field: str, amount: Decimal) -> float:
    if amount.adjusted() >= MAX_AMOUNT_DIGITS:
        raise InvalidConversion(
            field, f"{field}: {amount} has more than {MAX_AMOUNT_DIGITS} digits before the point"
        )
    as_float = float(amount)
    if Decimal(repr(as_float)) == amount:
        return as_float
    return float(amount.quantize(_CENTS, rounding=ROUND_HALF_UP))


# --- the event Meta receives ------------------------------------------------------------------


def build_meta_event(
    *,
    event_name: str,
    event_time: datetime | int,
    event_id: str,
    waba_id: str,
    ctwa_clid: str,
    custom_data: dict[str, Any] | orjson.Fragment | None,
    extra: dict[str, Any] | None = None,
    ldu: bool = False,
    ldu_country: int = 0,
    ldu_state: int = 0,
) -> dict[str, Any]:
    """One element of the ``data`` array of ``POST /{dataset_id}/events``.

    Takes validated input and builds a plain dict (dispatcher hot path: no validation, no
    copies; ``custom_data`` and ``extra`` values are referenced, not copied). The click id and
    WABA id are never hashed: Meta matches them as plain strings. ``custom_data`` is
    left out when ``None`` or empty; an ``orjson.Fragment`` (the stored JSON text, from the
    dispatcher) goes into the request as it is. ``extra`` adds keys such as
    ``messaging_outcome_data`` or ``opt_out`` and may not override a key this function sets
    (ValueError); its ``user_data`` (hashed customer information) is added to ``user_data``.
    LDU (meta-api.md §3.7): with ``ldu`` the event carries ``data_processing_options: ["LDU"]``
    and both country and state, since WhatsApp events have no IP for Meta to geolocate;
    without it, no LDU key at all. ``event_time`` may be given in Unix seconds already (an
    ``int``: the dispatcher's claim).
    """
    event: dict[str, Any] = {
        "event_name": event_name,
        "event_time": event_time if isinstance(event_time, int) else to_unix(event_time),
        "event_id": event_id,
        "action_source": "business_messaging",
        "messaging_channel": "whatsapp",
        "user_data": {"whatsapp_business_account_id": waba_id, "ctwa_clid": ctwa_clid},
    }
    if custom_data:
        event["custom_data"] = custom_data
    if ldu:
        event["data_processing_options"] = ["LDU"]
        event["data_processing_options_country"] = ldu_country
        event["data_processing_options_state"] = ldu_state
    if extra:
        if "user_data" in extra:  # hashed customer information (waconv.customers.store)
            extra = dict(extra)
            hashed = extra.pop("user_data")
            if not isinstance(hashed, dict):
                raise ValueError("extra may not override user_data (only add to it, as an object)")
            user_data = event["user_data"]
            for key, value in hashed.items():
                user_data.setdefault(key, value)  # never replaces the WABA id or the click id
        if not _RESERVED_EVENT_KEYS.isdisjoint(extra):
            clash = sorted(_RESERVED_EVENT_KEYS.intersection(extra))
            raise ValueError(f"extra may not override {', '.join(clash)}")
        event.update(extra)
    return event
