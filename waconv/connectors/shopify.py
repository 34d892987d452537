"""A Shopify order webhook read as a conversion: pure functions, no database.

Shopify's order payload (``orders/paid``, ``orders/fulfilled``, ``orders/cancelled``) carries
the order's amounts and items, and the customer's phone numbers, email, name and address:
what matches the order to a WhatsApp conversation, and what Meta's ``user_data`` may carry.
The plain customer values live only in the ``ShopifyOrder`` of one request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from waconv.conversions.events import MAX_AMOUNT_DIGITS

MAX_ORDER_ID = 255  # Conversion.order_id and ConnectorReceipt.order_id are VARCHAR(255)

# X-Shopify-Topic -> the business-messaging event it is.
TOPICS = {
    "orders/paid": "Purchase",
    "orders/fulfilled": "OrderShipped",
    "orders/cancelled": "OrderCanceled",
}
# Where an order keeps phone numbers, in the order they are tried.
_PHONE_PLACES = (
    ("phone",),
    ("customer", "phone"),
    ("shipping_address", "phone"),
    ("billing_address", "phone"),
    ("customer", "default_address", "phone"),
)
_EMAIL_PLACES = (("email",), ("contact_email",), ("customer", "email"))


class UnreadableOrder(ValueError):
    """The body is not an order waconv can read; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ShopifyOrder:
    order_id: str
    event_name: str
    custom_data: dict[str, Any]
    event_time: datetime | None
    phones: list[str] = field(repr=False)
    emails: list[str] = field(repr=False)
    # fn, ln, ct, st, zp, country, external_id, plain: hashed before anything keeps them.
    customer: dict[str, str] = field(repr=False)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no database stores it
        return False
    return True


def _dig(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _texts(order: dict[str, Any], places: tuple[tuple[str, ...], ...]) -> list[str]:
    found: list[str] = []
    for path in places:
        value = _dig(order, path)
        if isinstance(value, str) and value.strip() and value not in found:
            found.append(value)
    return found


def _amount(field_name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UnreadableOrder(field_name, f"{field_name} must be a decimal amount")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise UnreadableOrder(field_name, f"{field_name} must be a decimal amount") from None
    if not amount.is_finite() or amount < 0 or amount.adjusted() >= MAX_AMOUNT_DIGITS:
        raise UnreadableOrder(field_name, f"{field_name} must be a finite amount >= 0")
    return float(amount)


def _content_id(item: dict[str, Any]) -> str | None:
    # The contract: the line item's sku, else variant_id, else product_id.
    for key in ("sku", "variant_id", "product_id"):
        value = item.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | str) and str(value).strip():
            return str(value).strip()
    return None


def _contents(order: dict[str, Any]) -> list[dict[str, Any]]:
    items = order.get("line_items")
    if not isinstance(items, list):
        return []
    contents: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        content_id = _content_id(item)
        if content_id is None:  # a custom line item: no product to name
            continue
        entry: dict[str, Any] = {"id": content_id}
        quantity = item.get("quantity")
        if isinstance(quantity, int) and not isinstance(quantity, bool) and quantity >= 1:
            entry["quantity"] = quantity
        if item.get("price") is not None:
            entry["item_price"] = _amount(f"line_items[{i}].price", item["price"])
        contents.append(entry)
    return contents


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _customer(order: dict[str, Any]) -> dict[str, str]:
    address = order.get("billing_address") or order.get("shipping_address") or {}
    if not isinstance(address, dict):
        address = {}
    customer = order.get("customer") if isinstance(order.get("customer"), dict) else {}
    assert isinstance(customer, dict)
    values = {
        "fn": customer.get("first_name") or address.get("first_name"),
        "ln": customer.get("last_name") or address.get("last_name"),
        "ct": address.get("city"),
        "st": address.get("province_code") or address.get("province"),
        "zp": address.get("zip"),
        "country": address.get("country_code"),
        "external_id": customer.get("id"),
    }
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.strip():
            out[key] = value
    return out


def read_order(topic: str, order: object, *, triggered_at: datetime | None) -> ShopifyOrder:
    """The conversion an order webhook of ``topic`` (one of TOPICS) stands for."""
    event_name = TOPICS[topic]
    if not isinstance(order, dict):
        raise UnreadableOrder("body", "the body must be a JSON object (a Shopify order)")
    raw_id = order.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, int | str) or not str(raw_id).strip():
        raise UnreadableOrder("id", "the order has no id")
    order_id = str(raw_id).strip()
    if len(order_id) > MAX_ORDER_ID or not order_id.isprintable() or not _encodable(order_id):
        raise UnreadableOrder("id", "the order's id is not an order number")
    custom_data: dict[str, Any] = {"order_id": order_id}
    currency = order.get("currency")
    if order.get("total_price") is not None and isinstance(currency, str):
        custom_data["value"] = _amount("total_price", order["total_price"])
        custom_data["currency"] = currency
    contents = _contents(order)
    if contents:
        custom_data["contents"] = contents
        custom_data["num_items"] = sum(c.get("quantity", 1) for c in contents)
    # When the customer acted: the cancellation's own time, else when Shopify sent the
    # webhook (payment and fulfilment have no time of their own on the order).
    if event_name == "OrderCanceled":
        moment = parse_time(order.get("cancelled_at")) or triggered_at
    else:
        moment = triggered_at or parse_time(order.get("updated_at"))
    return ShopifyOrder(
        order_id=order_id,
        event_name=event_name,
        custom_data=custom_data,
        event_time=moment,
        phones=_texts(order, _PHONE_PLACES),
        emails=_texts(order, _EMAIL_PLACES),
        customer=_customer(order),
    )
