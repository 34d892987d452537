"""CLI: ``waconv conversions mark / list / retry``, the admin API from a shell.

Thin: options become the same request shapes the admin API parses, one transaction calls the
same :mod:`waconv.admin.service` functions, and a refusal is one line on stderr with exit 1.
"""

from __future__ import annotations

import json
from typing import Any

import click

from waconv.admin import service
from waconv.cli import fail_cleanly, services_scope
from waconv.models import Conversion


def register(main: click.Group) -> None:
    """Add this feature's commands to the ``waconv`` group."""
    main.add_command(conversions)


@click.group("conversions")
def conversions() -> None:
    """Conversions reported to Meta: mark one, list them, retry a failed one."""


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _custom_data(
    raw: str | None, value: float | None, currency: str | None
) -> dict[str, Any] | None:
    data: Any = None
    if raw is not None:
        try:
            data = json.loads(raw, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise service.bad_request(
                "invalid_json", "custom_data", f"--custom-data is not JSON: {exc}"
            ) from None
        if not isinstance(data, dict):
            raise service.bad_request(
                "invalid_custom_data", "custom_data", "--custom-data must be a JSON object"
            )
    for key, given in (("value", value), ("currency", currency)):
        if given is None:
            continue
        data = data if data is not None else {}
        if key in data:
            raise service.bad_request(
                "invalid_custom_data",
                f"custom_data.{key}",
                f"--custom-data already has {key!r}; give it once, not also as --{key}",
            )
        data[key] = given
    return data


@conversions.command("mark")
@click.option("--wa-id", default=None, metavar="WA_ID", help="The user's WhatsApp id (phone).")
@click.option("--user-id", default=None, metavar="ID", help="The business-scoped user id, instead.")
@click.option("--event", "event_name", required=True, metavar="NAME", help="e.g. Purchase.")
@click.option("--value", type=float, default=None, help="custom_data.value, e.g. 12.5.")
@click.option("--currency", default=None, metavar="CODE", help="custom_data.currency, e.g. BRL.")
@click.option("--custom-data", "custom_data", default=None, metavar="JSON", help="A JSON object.")
@click.option("--order-id", default=None, metavar="ID", help="Your order number.")
@click.option(
    "--event-time", type=int, default=None, metavar="UNIX", help="When it happened (default now)."
)
@click.option(
    "--phone-number-id", default=None, metavar="ID", help="When the user talks to several."
)
@click.option("--json", "as_json", is_flag=True, help="Print the conversion as JSON.")
@fail_cleanly
def mark(
    wa_id: str | None,
    user_id: str | None,
    event_name: str,
    value: float | None,
    currency: str | None,
    custom_data: str | None,
    order_id: str | None,
    event_time: int | None,
    phone_number_id: str | None,
    as_json: bool,
) -> None:
    """Report a conversion of a user's conversation, like POST /admin/conversions.

    Marking the same user, event and order again changes nothing and shows the conversion
    recorded first.
    """
    body: dict[str, Any] = {
        "wa_id": wa_id,
        "user_id": user_id,
        "event_name": event_name,
        "custom_data": _custom_data(custom_data, value, currency),
        "order_id": order_id,
        "event_time": event_time,
        "phone_number_id": phone_number_id,
    }
    request = service.MarkRequest.from_json(body)
    with services_scope() as services, services.db.transaction() as session:
        marked = service.mark_conversion(session, request)
        shown = service.conversion_to_dict(marked.conversion, services.settings)
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    what = "queued" if marked.created else "already recorded"
    click.echo(
        f"{what}: conversion {shown['id']} {shown['event_name']} at {shown['event_time']}, "
        f"status {shown['status']}, event_id {shown['event_id']}"
    )


@conversions.command("list")
@click.option(
    "--status", type=click.Choice(list(Conversion.STATUSES)), default=None, help="Only these."
)
@click.option("--event-name", default=None, metavar="NAME", help="Only this event.")
@click.option("--wa-id", default=None, metavar="WA_ID", help="Only this user's conversions.")
@click.option("--user-id", default=None, metavar="ID", help="Only this user's conversions.")
@click.option(
    "--limit",
    type=int,
    default=service.DEFAULT_LIMIT,
    show_default=True,
    help=f"At most {service.MAX_LIMIT}.",
)
@click.option("--cursor", default=None, help="The next cursor a previous page printed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON page, as the admin API answers.")
@fail_cleanly
def list_(
    status: str | None,
    event_name: str | None,
    wa_id: str | None,
    user_id: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """Conversions, newest first, like GET /admin/conversions."""
    query = service.ListQuery.from_args(
        {
            "status": status,
            "event_name": event_name,
            "wa_id": wa_id,
            "user_id": user_id,
            "limit": str(limit),
            "cursor": cursor,
        }
    )
    with services_scope() as services, services.db.transaction() as session:
        page = service.list_conversions(session, query)
        items = [service.conversion_to_dict(c, services.settings) for c in page.items]
    if as_json:
        click.echo(json.dumps({"items": items, "next_cursor": page.next_cursor}, indent=2))
        return
    if not items:
        click.echo("no conversions")
        return
    header = ("ID", "STATUS", "EVENT", "EVENT_TIME", "ATTEMPTS", "SOURCE", "LAST_ERROR")
    rows = [header] + [
        (
            str(i["id"]),
            i["status"],
            i["event_name"],
            i["event_time"],
            str(i["attempts"]),
            i["rule_name"] or i["source"],
            i["last_error"] or "-",
        )
        for i in items
    ]
    widths = [max(len(row[n]) for row in rows) for n in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}")


@conversions.command("retry")
@click.argument("conversion_id", type=int, metavar="ID")
@fail_cleanly
def retry(conversion_id: int) -> None:
    """Queue a failed conversion again, like POST /admin/conversions/ID/retry."""
    with services_scope() as services, services.db.transaction() as session:
        retried = service.retry_conversion(session, conversion_id)
        shown = service.conversion_to_dict(retried, services.settings)
    click.echo(f"queued again: conversion {shown['id']}, attempt {shown['attempts'] + 1} is due")
