"""The operator console: server-rendered pages over the admin services.

Views stay thin: they read the form or query string, call the same services as the admin API
and the CLI, and render. Every POST but the login carries the session's CSRF token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response as Redirect

from waconv import reports
from waconv.accounts import service as accounts
from waconv.admin import service
from waconv.clock import isoformat
from waconv.console import auth
from waconv.console.chart import daily_chart
from waconv.conversations import search
from waconv.errors import APIError
from waconv.models import (
    Click,
    ConnectorReceipt,
    Conversation,
    Conversion,
    Message,
    WebhookDelivery,
)
from waconv.outage import unavailable
from waconv.services import current_services

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

PAGE_SIZE = 50  # rows per list page: one screen on a desktop, quick on a phone
TIMELINE_LIMIT = 500  # a conversation's latest messages and clicks shown
OPEN = frozenset({"console.login", "console.static"})
SECTIONS = {
    "console.home": "ads",
    "console.conversions": "conversions",
    "console.conversion": "conversions",
    "console.conversations": "conversations",
    "console.conversation": "conversations",
    "console.accounts_page": "accounts",
    "console.webhooks": "webhooks",
    "console.orders": "orders",
}


@bp.before_request
def _require_session() -> Any:
    if not current_services().settings.admin_token:
        return render_template("console/disabled.html"), 503
    if request.endpoint in OPEN:
        return None
    session = auth.current_session()
    if session is None:
        return redirect(url_for("console.login"))
    g.console = session
    if request.method == "POST" and not auth.csrf_ok(session):
        return render_template(
            "console/error.html", message="The form expired; reload the page and try again."
        ), 400
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    # Pages name customers and may not be cached or framed; nothing runs but our own files.
    if g.get("notice_shown") and not g.get("notice_set"):
        auth.clear_notice(response)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'"
    )
    return response


@bp.app_context_processor
def _template_helpers() -> dict[str, Any]:
    if request.blueprint != "console":
        return {}
    notices = list(g.get("notices", []))
    shown = auth.read_notice()
    if shown is not None:
        g.notice_shown = True
        notices.insert(0, shown)
    return {
        "iso": isoformat,
        "csrf_field": auth.CSRF_FIELD,
        "notices": notices,
        "section": SECTIONS.get(request.endpoint or ""),
    }


def flash(message: str, level: str = "ok") -> None:
    """A notice on this page, or, when the view redirects, on the next one."""
    g.setdefault("notices", []).append({"level": level, "message": message})


def _redirect(endpoint: str, **values: Any) -> Redirect:
    response = redirect(url_for(endpoint, **values))
    for notice in g.pop("notices", []):
        auth.set_notice(response, notice["level"], notice["message"])
    g.notice_set = True
    return response


@bp.errorhandler(404)
def _not_found(_err: Any) -> Any:
    return render_template("console/error.html", message="There is no such page or record."), 404


@bp.errorhandler(SQLAlchemyError)
def _database_error(err: SQLAlchemyError) -> Any:
    """The API's 503 (not migrated, or not reachable for now), as a page a person reads."""
    refusal = unavailable(current_services().db, err)
    page = render_template("console/error.html", message=refusal.message)
    return page, refusal.status, refusal.headers


# --- login --------------------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        if auth.current_session() is not None:
            return redirect(url_for("console.home"))
        return render_template("console/login.html")
    with current_services().db.transaction() as session:
        wait = auth.login_retry_after(session)
        if wait is not None:
            # Refused before the token is even compared: guessing gains nothing while blocked.
            message = f"Too many wrong tokens from here; try again in {wait} seconds."
            page = render_template("console/login.html", error=message)
            return page, 429, {"Retry-After": str(wait)}
        if not auth.token_matches(request.form.get("token", "")):
            auth.login_failed(session)
            return render_template("console/login.html", error="That is not the admin token."), 401
        auth.login_succeeded(session)
    response = redirect(url_for("console.home"))
    auth.start_session(response)
    return response


@bp.post("/logout")
def logout() -> Redirect:
    response = redirect(url_for("console.login"))
    auth.end_session(response)
    return response


# --- ads ----------------------------------------------------------------------------------------


def _report_query() -> reports.ReportQuery:
    # An empty form field means "the default", not "refuse".
    args = MultiDict({k: v for k, v in request.args.items() if v.strip()})
    return reports.ReportQuery.from_args(args)


@bp.get("/")
def home() -> Any:
    try:
        query = _report_query()
    except APIError as err:
        flash(err.message, "error")
        query = reports.ReportQuery.from_args({})
    with current_services().db.transaction() as session:
        report = reports.ads_report(session, query)
        days = reports.daily(session, query)
    csv_args: dict[str, Any] = {"since": query.since.isoformat(), "until": query.until.isoformat()}
    if query.waba_id:
        csv_args["waba_id"] = query.waba_id
    return render_template(
        "console/ads.html",
        report=report,
        totals=report.totals,
        names=report.event_names(),
        currencies=report.currencies(),
        chart=daily_chart(days),
        days=days,
        query=query,
        csv_url=url_for("console.ads_csv", **csv_args),
    )


@bp.get("/ads.csv")
def ads_csv() -> Response:
    query = _report_query()
    with current_services().db.transaction() as session:
        report = reports.ads_report(session, query)
    name = f"ads-{query.since.isoformat()}-{query.until.isoformat()}.csv"
    return Response(
        report.to_csv(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# --- conversions --------------------------------------------------------------------------------


@bp.get("/conversions")
def conversions() -> Any:
    filters = {k: v for k, v in request.args.items() if v.strip()}
    args: dict[str, str | None] = {
        k: filters.get(k) for k in ("status", "event_name", "source", "wa_id", "cursor")
    }
    args["limit"] = str(PAGE_SIZE)
    try:
        query = service.ListQuery.from_args(args)
    except APIError as err:
        flash(err.message, "error")
        query = service.ListQuery.from_args({"limit": str(PAGE_SIZE)})
    with current_services().db.transaction() as session:
        page = service.list_conversions(session, query)
        items = [service.conversion_to_dict(c) for c in page.items]
    next_args: dict[str, Any] = {k: v for k, v in filters.items() if k != "cursor"}
    return render_template(
        "console/conversions.html",
        items=items,
        filters=filters,
        statuses=Conversion.STATUSES,
        next_url=(
            url_for("console.conversions", cursor=page.next_cursor, **next_args)
            if page.next_cursor
            else None
        ),
    )


@bp.get("/conversions/<int:conversion_id>")
def conversion(conversion_id: int) -> Any:
    services = current_services()
    with services.db.transaction() as session:
        row = _conversion_or_404(session, conversion_id)
        body = service.conversion_detail(session, conversion_id, services.settings)
        body["last_error_title"] = row.last_error_title
        body["last_error_message"] = row.last_error_message
        body["last_error_fbtrace_id"] = row.last_error_fbtrace_id
    sent = body["sent_event"]
    return render_template(
        "console/conversion.html",
        c=body,
        event_json=json.dumps(sent, indent=2, ensure_ascii=False) if sent else None,
        requests=body["requests"],
        can_retry=body["status"] == Conversion.FAILED,
        can_cancel=body["status"] in (Conversion.PENDING, Conversion.FAILED),
    )


def _conversion_or_404(session: Any, conversion_id: int) -> Conversion:
    try:
        return service.get_conversion(session, conversion_id)
    except APIError:
        abort(404)


@bp.post("/conversions/<int:conversion_id>/retry")
def retry(conversion_id: int) -> Redirect:
    try:
        with current_services().db.transaction() as session:
            service.retry_conversion(session, conversion_id)
        flash(f"Conversion {conversion_id} is queued again.", "ok")
    except APIError as err:
        if err.status == 404:
            abort(404)
        flash(err.message, "error")
    return _redirect("console.conversion", conversion_id=conversion_id)


@bp.post("/conversions/<int:conversion_id>/cancel")
def cancel(conversion_id: int) -> Redirect:
    try:
        with current_services().db.transaction() as session:
            service.cancel_conversion(session, conversion_id)
        flash(f"Conversion {conversion_id} is canceled: it will never be sent.", "ok")
    except APIError as err:
        if err.status == 404:
            abort(404)
        flash(err.message, "error")
    return _redirect("console.conversion", conversion_id=conversion_id)


# --- conversations ------------------------------------------------------------------------------


@bp.get("/conversations")
def conversations() -> Any:
    q = request.args.get("q", "").strip()[: search.MAX_QUERY]
    found: list[Conversation] = []
    if q:
        with current_services().db.transaction() as session:
            found = list(search.search(session, q))
            session.expunge_all()
    return render_template("console/conversations.html", q=q, found=found)


@bp.get("/conversations/<int:conversation_id>")
def conversation(conversation_id: int) -> Any:
    with current_services().db.transaction() as session:
        conv = session.get(Conversation, conversation_id)
        if conv is None:
            abort(404)
        clicks = session.scalars(
            select(Click)
            .where(Click.conversation_id == conversation_id)
            .order_by(Click.clicked_at.desc())
            .limit(TIMELINE_LIMIT)
        )
        messages = session.scalars(
            select(Message)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.timestamp.desc())
            .limit(TIMELINE_LIMIT)
        )
        timeline = [TimelineItem(c.clicked_at, "click", click=c) for c in clicks]
        timeline += [TimelineItem(m.timestamp, "message", message=m) for m in messages]
        timeline.sort(key=lambda item: item.at)
        convs = session.scalars(
            select(Conversion)
            .where(Conversion.conversation_id == conversation_id)
            .order_by(Conversion.id.desc())
            .limit(TIMELINE_LIMIT)
        )
        conversions_of = [service.conversion_to_dict(c) for c in convs]
        info = conv.__dict__.copy()
    return render_template(
        "console/conversation.html",
        conv=info,
        timeline=timeline,
        conversions=conversions_of,
    )


@dataclass(frozen=True)
class TimelineItem:
    at: datetime
    kind: str  # click | message
    click: Click | None = None
    message: Message | None = None


# --- accounts -----------------------------------------------------------------------------------


@bp.get("/accounts")
def accounts_page() -> Any:
    services = current_services()
    views = accounts.list_accounts(services)
    return render_template("console/accounts.html", accounts=views)


@bp.post("/accounts/<waba_id>/resume")
def resume(waba_id: str) -> Redirect:
    try:
        accounts.resume_account(current_services(), waba_id)
        flash(f"Account {waba_id} resumed.", "ok")
    except accounts.AccountError as err:
        flash(str(err), "error")
    return _redirect("console.accounts_page")


# --- shop orders ----------------------------------------------------------------------------------


@bp.get("/orders")
def orders() -> Any:
    """What became of each Shopify order webhook, newest first, with the reason for the ones
    that made no conversion; never a word of customer information."""
    rows, outcome = _latest_rows(
        ConnectorReceipt.outcome,
        ConnectorReceipt.OUTCOMES,
        request.args.get("outcome", ""),
        ConnectorReceipt.id,
        ConnectorReceipt.received_at,
        ConnectorReceipt.connector,
        ConnectorReceipt.topic,
        ConnectorReceipt.order_id,
        ConnectorReceipt.event_name,
        ConnectorReceipt.matched_by,
        ConnectorReceipt.conversion_id,
        ConnectorReceipt.reason,
    )
    return render_template(
        "console/orders.html", rows=rows, outcome=outcome, outcomes=ConnectorReceipt.OUTCOMES
    )


def _latest_rows(state: Any, states: tuple[str, ...], wanted: str, *columns: Any) -> Any:
    """A list page: the latest PAGE_SIZE rows (``columns`` and ``state``), newest first, only
    those in the ``wanted`` state when it is one of ``states``; and the filter applied ("" for
    none)."""
    table = state.class_
    stmt = select(*columns, state)
    if wanted in states:
        stmt = stmt.where(state == wanted)
    else:
        wanted = ""
    with current_services().db.transaction() as session:
        rows = session.execute(stmt.order_by(table.id.desc()).limit(PAGE_SIZE)).all()
    return rows, wanted


# --- webhook deliveries -------------------------------------------------------------------------


@bp.get("/webhooks")
def webhooks() -> Any:
    rows, status = _latest_rows(
        WebhookDelivery.status,
        (WebhookDelivery.RECEIVED, WebhookDelivery.PROCESSED, WebhookDelivery.FAILED),
        request.args.get("status", ""),
        WebhookDelivery.id,
        WebhookDelivery.received_at,
        WebhookDelivery.items,
        WebhookDelivery.attempts,
        WebhookDelivery.error,
        WebhookDelivery.pruned_at,
    )
    return render_template("console/webhooks.html", rows=rows, status=status)


@bp.post("/webhooks/<int:delivery_id>/replay")
def replay(delivery_id: int) -> Redirect:
    from waconv.webhooks.ingest import replay as replay_deliveries

    results = replay_deliveries(current_services(), ids=[delivery_id])
    if not results:
        flash(f"No webhook delivery {delivery_id}.", "error")
    elif results[0].ok:
        flash(f"Delivery {delivery_id} replayed.", "ok")
    else:
        flash(f"Delivery {delivery_id} failed again: {results[0].error}", "error")
    return _redirect("console.webhooks", status=request.args.get("status", ""))
