"""The outbox as the dispatcher reads and writes it: claims and outcomes.

The only place with SQL written for the driver (the claim and the sent outcome run for every
1,000 events: bench/PROFILE.md), and the Core expressions the other outcomes share. Built once,
at import, for each dialect.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import (
    BigInteger,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from waconv.conversions.requestlog import REQUEST_FIELDS, RequestRecord
from waconv.db import Database, UTCDateTime, id_list, time_binder
from waconv.graph.client import MAX_REQUEST_BYTES
from waconv.models import Account, Conversion, ConversionDelivery

# An event's JSON beyond its custom_data and further fields (names, ids, click id, times).
EVENT_OVERHEAD_BYTES = 400


class Row(NamedTuple):
    """A claimed event: what sending it needs (plain tuple: the hot path reads it often)."""

    id: int
    event_id: str
    event_name: str
    # event_time in Unix seconds, computed by the database: parsing SQLite's text into a
    # datetime and taking its timestamp cost 3,100 instructions a row in Python, the claim's
    # largest part (callgrind; unixepoch() in SQLite: a tenth of it).
    event_unix: int
    ctwa_clid: str
    # As stored, JSON text wrapped for orjson to embed verbatim: decoding it only for the
    # request to encode it again cost more than the rest of the event.
    custom_data: orjson.Fragment | None
    extra: dict[str, Any] | None
    attempts: int  # before this attempt
    # next_attempt_at as the driver returned it: where the turn's next claim starts.
    due: Any


# The claim's SELECT, given to the driver as written: it runs for every 1,000 events, and
# SQLAlchemy's result types (datetimes parsed from SQLite's text, JSON) cost 10 of its 15 ms
# CPU per 1,000 rows on SQLite; the query itself takes 1.5 ms. Rows come in the order of the
# partial index ix_conversions_account_due; within a turn, each claim starts after the
# previous one's last row (``Claimed.last``). On PostgreSQL, the outer query keeps the rows
# whose JSON fits a request's byte cap (the first row always): a backlog of large events is
# read a request at a time, so a dispatcher's memory does not grow with them (1,000 events of
# 60 KB: bench/fleet). Each JSON is cast to text once, its size taken from the text, and the
# running sum's frame is ROWS (the default RANGE looks for peers): the cap costs 0.6 ms of
# PostgreSQL per 1,000 rows, where it cost 1.5.
_CLAIM_SQL = (
    "SELECT id, event_id, event_name, event_unix, ctwa_clid, custom_data, extra, attempts,"
    " next_attempt_at, upto FROM (SELECT *, SUM(size) OVER (ORDER BY next_attempt_at, id"
    " ROWS UNBOUNDED PRECEDING) AS upto FROM (SELECT *, COALESCE(OCTET_LENGTH(custom_data), 0)"
    " + COALESCE(OCTET_LENGTH(extra), 0) + {per_event} AS size FROM (SELECT id, event_id,"
    " event_name, {event_unix} AS event_unix, ctwa_clid, CAST(custom_data AS TEXT) AS custom_data,"
    " CAST(extra AS TEXT) AS extra, attempts, next_attempt_at FROM conversions"
    " WHERE waba_id = {waba_id} AND status = 'pending' AND next_attempt_at <= {now}"
    " AND event_time >= {oldest}{after} ORDER BY next_attempt_at, id LIMIT {limit}) AS due)"
    " AS sized) AS claim WHERE upto - size < {max_bytes} ORDER BY next_attempt_at, id"
)
_CLAIM_AFTER = " AND (next_attempt_at, id) > ({after_due}, {after_id})"
# SQLite's claim: the inner query alone, its rows read a few at a time up to the byte cap
# (``_within_cap``). sqlite3 steps the query as rows are fetched, so the rows past the cap
# are not read either; the windows and their two sorts cost 4.5 of the claim's 6.4 ms.
_CLAIM_STREAM_SQL = (
    "SELECT id, event_id, event_name, {event_unix}, ctwa_clid, CAST(custom_data AS TEXT),"
    " CAST(extra AS TEXT), attempts, next_attempt_at FROM conversions"
    " WHERE waba_id = {waba_id} AND status = 'pending' AND next_attempt_at <= {now}"
    " AND event_time >= {oldest}{after} ORDER BY next_attempt_at, id LIMIT {limit}"
)
STREAM_ROWS = 32  # rows fetched at a time: at most this many read past the cap
# event_time in whole Unix seconds, truncated as clock.to_unix does (the admin API rebuilds
# the event sent with it). SQLite: the stored text ('YYYY-MM-DD HH:MM:SS.ffffff') without its
# fraction, since SQLite's date functions round to the millisecond (.9995 became the next
# second); before 3.38 there is no unixepoch(), and strftime('%s') takes a quarter more
# instructions. PostgreSQL's date_part is a double (its floor is the right second for any date
# before 2500): 0.12 ms of a claim of 1,000, where EXTRACT's numeric took 0.27 (EXPLAIN ANALYZE).
SQLITE_UNIX = (
    "unixepoch(substr(event_time, 1, 19))",
    "CAST(strftime('%s', substr(event_time, 1, 19)) AS INTEGER)",
)
_EVENT_UNIX = {
    "sqlite": SQLITE_UNIX[0] if sqlite3.sqlite_version_info >= (3, 38) else SQLITE_UNIX[1],
    "postgresql": "CAST(floor(date_part('epoch', event_time)) AS bigint)",
}

# "Still pending" where a batch's outcome is recorded, written so that PostgreSQL's planner
# cannot answer it from the partial due indexes: before a new table's first ANALYZE it did,
# testing every pending event against the batch's 1,000 ids (108 ms a batch instead of 14).
_SETTLED = tuple(status for status in Conversion.STATUSES if status != Conversion.PENDING)
UNSETTLED = Conversion.status.not_in(_SETTLED)

# What _finalize does for the sent outcome (see _record_sent).
_SENT_SQL = (
    "{request_row}UPDATE conversions SET status = 'sent', attempts = attempts + 1,"
    " sent_at = {now}, updated_at = {now}, dataset_id = {dataset_id}, last_error = NULL"
    "{request_id}"
    " WHERE id {id_in} AND status NOT IN ({settled})"
)
# ``id IN`` the batch, given as one text parameter by id_list (id_in says it for Core).
_ID_IN_SQL = {
    "sqlite": "IN (SELECT value FROM json_each({ids}))",
    "postgresql": "= ANY(CAST({ids} AS bigint[]))",
}
_PARAMETER_MARKS = {"sqlite": ":{}", "postgresql": "%({})s"}


class _Parameters(dict[str, str]):
    """For ``str.format_map``: each ``{name}`` not given becomes the driver's named parameter
    ``name`` (``:name`` for sqlite3, ``%(name)s`` for psycopg)."""

    def __init__(self, dialect: str) -> None:
        super().__init__()
        self.mark = _PARAMETER_MARKS[dialect]

    def __missing__(self, name: str) -> str:
        return self.mark.format(name)


def _driver_sql(template: str, dialect: str, **fragments: str) -> str:
    """``template`` as the driver of ``dialect`` takes it, each fragment (a template too) in
    its place."""
    parameters = _Parameters(dialect)
    parameters.update({name: text.format_map(parameters) for name, text in fragments.items()})
    return template.format_map(parameters)


CLAIM_STATEMENTS = {
    (dialect, after): _driver_sql(
        _CLAIM_SQL if dialect == "postgresql" else _CLAIM_STREAM_SQL,
        dialect,
        after=_CLAIM_AFTER if after else "",
        event_unix=_EVENT_UNIX[dialect],
    )
    for dialect in _PARAMETER_MARKS
    for after in (False, True)
}


# The accepted request's row in the request log (see mark_sent).
_REQUEST_ROW_SQL = "INSERT INTO dispatch_requests ({columns}) VALUES ({values}) RETURNING id"


def _request_row_sql(dialect: str) -> str:
    """``_REQUEST_ROW_SQL`` as a template of the driver's parameters."""
    values = ", ".join(
        "CAST({messages} AS jsonb)"
        if name == "messages" and dialect == "postgresql"
        else "{" + name + "}"
        for name in REQUEST_FIELDS
    )
    return _REQUEST_ROW_SQL.replace("{columns}", ", ".join(REQUEST_FIELDS)).replace(
        "{values}", values
    )


def _sent_sql(dialect: str, *, request: bool) -> str:
    """The sent outcome; with ``request``, setting the request log's id on each event: on
    PostgreSQL the request's row goes in the same statement (a CTE), on SQLite it is given
    (``mark_sent`` inserts it just before)."""
    fragments = {
        "id_in": _ID_IN_SQL[dialect],
        "settled": ", ".join(f"'{status}'" for status in _SETTLED),
        "request_row": "",
        "request_id": "",
    }
    if request and dialect == "postgresql":
        fragments["request_row"] = "WITH request AS (" + _request_row_sql(dialect) + ") "
        fragments["request_id"] = ", sent_request_id = (SELECT id FROM request)"
    elif request:
        fragments["request_id"] = ", sent_request_id = {request_id}"
    return _driver_sql(_SENT_SQL, dialect, **fragments)


SENT_STATEMENTS = {dialect: _sent_sql(dialect, request=False) for dialect in _PARAMETER_MARKS}
SENT_WITH_REQUEST_STATEMENTS = {
    dialect: _sent_sql(dialect, request=True) for dialect in _PARAMETER_MARKS
}
_REQUEST_ROW_SQLITE = _driver_sql(_request_row_sql("sqlite"), "sqlite")


def _json_or_none(text: str | None) -> Any:
    return None if text is None or text == "null" else orjson.loads(text)


def _fragment_or_none(text: str | None) -> orjson.Fragment | None:
    return None if text is None or text in ("null", "{}") else orjson.Fragment(text)


def claim_rows(result: list[tuple[Any, ...]]) -> list[Row]:
    return [
        Row(
            i,
            eid,
            name,
            when,
            clid,
            _fragment_or_none(custom),
            _json_or_none(extra),
            tries,
            due,
        )
        for i, eid, name, when, clid, custom, extra, tries, due in result
    ]


# Why the sweep expired an event: one Meta answered had failed before; one never tried was
# queued, held or backed off until the limit (or queued within a minute of it).
STALE_REASON = case(
    (
        Conversion.attempts > 0,
        "expired: not delivered before Meta's 7-day limit on event_time (see the previous "
        "error in the logs and metrics)",
    ),
    else_=(
        "expired: never sent: Meta's 7-day limit on event_time (less a minute for sending) "
        "passed while it waited (queued too close to the limit, or its account held or paused)"
    ),
)


def is_due(now: datetime) -> Any:
    # ``status = 'pending'``, as the partial due indexes say it: SQLite's planner uses them
    # only for a query that repeats their condition (an IN list would not do).
    return and_(Conversion.status == Conversion.PENDING, Conversion.next_attempt_at <= now)


def lease_free(now: datetime) -> Any:
    """Accounts no dispatcher holds now."""
    return or_(Account.dispatch_token.is_(None), Account.dispatch_leased_until < now)


def id_in(ids: Sequence[int], dialect: str) -> Any:
    """``id IN (the batch)``, with ``id_list``."""
    listed = bindparam(None, id_list(ids, dialect), type_=Text)
    if dialect == "postgresql":
        return Conversion.id == any_(cast(listed, ARRAY(BigInteger)))
    return Conversion.id.in_(select(func.json_each(listed).table_valued("value").c.value))


def delivery_in(ids: Sequence[int], dialect: str) -> Any:
    """``conversion_id IN (ids)`` of conversion_deliveries, with ``id_list``."""
    listed = bindparam(None, id_list(ids, dialect), type_=Text)
    column = ConversionDelivery.conversion_id
    if dialect == "postgresql":
        # A join with the ids, not ``= ANY``: the table is new and unanalyzed when the first
        # Gateway batches go, PostgreSQL scans it, and a prepared (generic) plan tests each
        # row against the whole array: 755 ms of PostgreSQL per 1,000 events at 20,000.
        return column.in_(select(func.unnest(cast(listed, ARRAY(BigInteger)))))
    return column.in_(select(func.json_each(listed).table_valued("value").c.value))


# A batch's new delivery rows in one statement, the rows given as text parameters (psycopg's
# executemany sends a statement per row: 100 ms per 1,000 on PostgreSQL; on SQLite the ORM's
# per-row parameter processing cost 20 ms per 1,000).
_INSERT_DELIVERIES = {
    "postgresql": text(
        "INSERT INTO conversion_deliveries"
        " (conversion_id, destination, status, attempts, next_attempt_at, updated_at)"
        " SELECT cid, destination, :status, 0, :now, :now"
        " FROM unnest(CAST(:ids AS bigint[]), CAST(:destinations AS text[])) AS d(cid, destination)"
    ).bindparams(bindparam("now", type_=UTCDateTime)),
    "sqlite": text(
        "INSERT INTO conversion_deliveries"
        " (conversion_id, destination, status, attempts, next_attempt_at, updated_at)"
        " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), :status, 0, :now, :now"
        " FROM json_each(:rows)"
    ).bindparams(bindparam("now", type_=UTCDateTime)),
}


def insert_deliveries(session: Session, missing: list[tuple[int, str]], now: datetime) -> None:
    """New pending delivery rows (conversion id, destination), due ``now``."""
    dialect = session.get_bind().dialect.name
    parameters: dict[str, Any] = {"status": ConversionDelivery.PENDING, "now": now}
    if dialect == "postgresql":
        parameters["ids"] = id_list([cid for cid, _ in missing], dialect)
        parameters["destinations"] = "{" + ",".join(name for _, name in missing) + "}"
    else:
        parameters["rows"] = orjson.dumps(missing).decode()
    session.execute(_INSERT_DELIVERIES[dialect], parameters)


def rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


class Claim(NamedTuple):
    rows: list[Row]
    # Whether due events may remain after these: the claim reached its limit, or stopped at
    # the byte cap.
    more: bool


def claim(
    db: Database,
    waba_id: str,
    limit: int,
    *,
    now: datetime,
    oldest: datetime,
    after: tuple[Any, int] | None = None,
) -> Claim:
    """Up to ``limit`` due events of the account, oldest due first, after ``after`` (the
    previous claim of a turn), none with an event_time before ``oldest``, no more than a
    request's byte cap of them (at least one). A read only."""
    bind = time_binder(db.engine.dialect)
    parameters: dict[str, Any] = {
        "waba_id": waba_id,
        "now": bind(now),
        "oldest": bind(oldest),
        "limit": limit,
        "per_event": EVENT_OVERHEAD_BYTES,
        "max_bytes": MAX_REQUEST_BYTES,
    }
    if after is not None:
        parameters["after_due"], parameters["after_id"] = after
    with db.autocommit_cursor(write=False) as cursor:
        cursor.execute(CLAIM_STATEMENTS[db.dialect, after is not None], parameters)
        if db.dialect != "postgresql":
            taken, more = _within_cap(cursor, limit)
            return Claim(claim_rows(taken), more)
        result = cursor.fetchall()
    # More may be due if the claim took its limit, or if the cap may have left the next row
    # out (the last row kept reaches it).
    more = bool(result) and (len(result) == limit or result[-1][-1] >= MAX_REQUEST_BYTES)
    return Claim(claim_rows([r[:-1] for r in result]), more)


def _within_cap(cursor: Any, limit: int) -> tuple[list[tuple[Any, ...]], bool]:
    """The claimed rows as the window query keeps them: each whose events before it take
    less than the byte cap (the first always); and whether due events may remain. A chunk
    that stays under the cap is measured as a whole, in C; only the one that reaches it row
    by row (the loop over every row was a tenth of a claim's CPU)."""
    taken: list[tuple[Any, ...]] = []
    before = 0
    while chunk := cursor.fetchmany(STREAM_ROWS):
        size = _json_bytes(chunk)
        if before + size < MAX_REQUEST_BYTES:
            taken += chunk
            before += size
            continue
        for row in chunk:
            if before >= MAX_REQUEST_BYTES:
                return taken, True
            taken.append(row)
            before += _json_bytes((row,))
    return taken, len(taken) == limit


_CUSTOM_DATA, _EXTRA = operator.itemgetter(5), operator.itemgetter(6)


def _json_bytes(rows: Sequence[tuple[Any, ...]]) -> int:
    """What the claimed ``rows`` take in a request, as the cap counts it."""
    custom = sum(map(len, filter(None, map(_CUSTOM_DATA, rows))))
    extra = sum(map(len, filter(None, map(_EXTRA, rows))))
    return custom + extra + EVENT_OVERHEAD_BYTES * len(rows)


def mark_sent(
    db: Database,
    ids: Sequence[int],
    dataset_id: str | None,
    now: datetime,
    request: RequestRecord | None = None,
) -> int:
    """The sent outcome of a batch, on its events still pending, with the ``request`` that
    delivered it in the request log, each event linked to it: the one write of every 1,000
    events (on PostgreSQL one statement). How many it marked."""
    bind = time_binder(db.engine.dialect)
    parameters: dict[str, Any] = {
        "now": bind(now),
        "dataset_id": dataset_id,
        "ids": id_list(ids, db.dialect),
    }
    statement = SENT_STATEMENTS[db.dialect]
    if request is not None:
        parameters.update(_request_parameters(request, bind))
        statement = SENT_WITH_REQUEST_STATEMENTS[db.dialect]
    with db.autocommit_cursor() as cursor:
        if request is not None and db.dialect == "sqlite":
            # Each statement its own transaction: inside one, SQLite keeps a statement journal
            # for the UPDATE of 1,000 rows. It once spilled to /var/tmp (0.5 ms more CPU per
            # batch); in memory (temp_store) it still costs 0.77M instructions a batch, 1 % of
            # a dispatch run (callgrind). If the UPDATE fails, the request's row stands
            # without its events: the log is best effort, and the outcome goes again without
            # it (Dispatcher._record_sent).
            cursor.execute(_REQUEST_ROW_SQLITE, parameters)
            (parameters["request_id"],) = cursor.fetchone()
        cursor.execute(statement, parameters)
        return max(int(cursor.rowcount), 0)


def _request_parameters(request: RequestRecord, bind: Any) -> dict[str, Any]:
    """The request log's row as the driver's parameters (``bind``: the dialect's time
    binder)."""
    values = {name: getattr(request, name) for name in REQUEST_FIELDS}
    values["at"] = bind(request.at)
    if request.messages is not None:
        values["messages"] = orjson.dumps(request.messages).decode()
    return values
