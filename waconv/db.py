"""Declarative base, column types that behave the same on SQLite and PostgreSQL, and the engine.

The edge (a request, a CLI command, one dispatcher step) owns the transaction: it opens one with
``Database.transaction()``; services only ``flush()``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData, create_engine, event, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Session, lazyload, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite needs INTEGER PRIMARY KEY for its rowid alias; PostgreSQL gets 64-bit ids.
BigId = BigInteger().with_variant(Integer(), "sqlite")
JsonDoc = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, whatever the database keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        # SQLite compares timestamps as text: store one fixed format without offset.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@functools.cache
def time_binder(dialect: Dialect) -> Callable[[datetime], Any]:
    """A ``UTCDateTime`` parameter as the ORM would give it to the driver, for SQL given to the
    driver itself: the text SQLite compares, the aware datetime PostgreSQL takes."""
    processor = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    return processor or (lambda value: value)


def from_driver_time(value: Any) -> datetime:
    """A ``UTCDateTime`` column as the driver returned it, as an aware UTC datetime."""
    if isinstance(value, str):  # SQLite's naive UTC text (8x faster than .replace(tzinfo))
        return datetime.fromisoformat(value + "+00:00")
    return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# SQLite copies the WAL back into the database (a checkpoint: megabytes written, two fsyncs)
# from whichever commit makes the WAL pass this many pages: by default every ~250 webhook
# requests, each then holding the writers' queue through the fsyncs (measured: 2,238 ->
# 2,778 req/s without them). Where the background processor checkpoints instead
# (``Database.checkpoint``, every processor.CHECKPOINT_SECONDS), commits only do it past the
# higher mark, i.e. when no processor is running.
SQLITE_AUTOCHECKPOINT_PAGES = 1_000  # SQLite's own default
DEFERRED_AUTOCHECKPOINT_PAGES = 20_000


def _sqlite_pragmas(autocheckpoint: int, dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the single writer; NORMAL sync survives a killed process
    # (only a power cut can lose the last commits); busy_timeout queues writers of several
    # gunicorn workers instead of failing them.
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _sqlite_begin)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint)}")
    # A statement that writes many rows inside a transaction keeps a statement journal, and
    # one on a table with triggers (the rollups' on conversions and clicks) always may need
    # it: past 64 KiB SQLite spilled it to a file in /var/tmp, 16 writes per delivery the
    # processor applied (strace). In memory: 2,954 -> 3,044 deliveries/s, 3 % less CPU
    # (6 alternations of 3,000). Temporary tables and sorts stay in memory too; ours are small.
    # (A VACUUM on such a connection would build its copy of the database in memory: waconv
    # runs none; an operator's sqlite3 shell does not have this setting.)
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.close()


SQLITE_OVERFLOW = 10  # SQLAlchemy's default for a file database's pool


def _sqlite_begin(conn: Any) -> None:
    # BEGIN IMMEDIATE takes the write lock up front: a deferred transaction that reads and then
    # writes fails at once with SQLITE_BUSY when another process wrote meanwhile.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int | None = None,
    autocheckpoint: int = SQLITE_AUTOCHECKPOINT_PAGES,
) -> Engine:
    """``max_overflow``: connections opened beyond ``pool_size`` when threads need them (a
    dispatcher's concurrent account turns); ``pool_size`` by default."""
    overflow = pool_size if max_overflow is None else max_overflow
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": 30}, max_overflow=max(SQLITE_OVERFLOW, overflow)
        )
        event.listen(engine, "connect", functools.partial(_sqlite_pragmas, autocheckpoint))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=overflow,
        # No pre-ping: it added a SELECT 1 round trip to every webhook request (measured
        # 561 -> 836 req/s without it). A connection broken by a database restart fails once,
        # the pool is invalidated, and Meta redelivers what got a 500.
        pool_recycle=300,
        # Every statement planned for its own values: psycopg would prepare a statement after
        # five runs, and PostgreSQL may then keep a generic plan. Made while a table was empty,
        # the conversation lookup scanned every conversation of a phone number, and processing
        # slowed from 290 to 100 deliveries/s over 10,000 (steady at ~340/s unprepared). Our
        # statements are small: planning them costs less than one bad generic plan. (Also what
        # PgBouncer in transaction mode needs.)
        connect_args={"prepare_threshold": None},
    )


class WriterQueue:
    """Makes SQLite's writers wait in line instead of polling for the write lock.

    SQLite lets one transaction write at a time; the others retry from its busy handler,
    which sleeps 1, 2, 5, 10, 15, 20, 25 ms and more between tries, so a writer often sleeps
    well past the moment the lock was free (measured: webhook p99 of 150 ms to 2 s under load
    beside the processor). Our transactions first take an flock on a file beside the
    database, which the kernel hands to the next waiter as soon as it is released: the
    processes of one host then write in turn. Only a queue: SQLite's own locking still
    guards the data, and a writer that skips the queue (another tool) is still safe.
    """

    def __init__(self, database_path: str) -> None:
        self.path = f"{database_path}-writers.lock"
        self.threads = threading.RLock()  # an flock does not exclude threads of one process
        self.depth = 0
        self.file: IO[bytes] | None = None
        self.pid = 0

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        with self.threads:
            if self.depth == 0:
                fcntl.flock(self._file(), fcntl.LOCK_EX)
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
                if self.depth == 0:
                    fcntl.flock(self._file(), fcntl.LOCK_UN)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def _file(self) -> IO[bytes]:
        if self.file is None or self.pid != os.getpid():  # not shared with a forked child
            if self.file is not None:
                self.file.close()  # this process's copy only: the parent's lock stays
            self.file = open(self.path, "a+b")  # noqa: SIM115 (kept open for the process)
            self.pid = os.getpid()
        return self.file


_writer_queues: dict[str, WriterQueue] = {}
_writer_queues_lock = threading.Lock()


@atexit.register
def _close_writer_queues() -> None:
    for queue in _writer_queues.values():
        queue.close()


def _writer_queue(database_path: str) -> WriterQueue:
    """One queue per database file and process, whichever Database objects use it: two
    queues in one thread would wait for each other for ever."""
    key = os.path.abspath(database_path)
    with _writer_queues_lock:
        return _writer_queues.setdefault(key, WriterQueue(key))


class Database:
    """The engine and session factory of one app or CLI run."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        max_overflow: int | None = None,
        autocheckpoint: int = SQLITE_AUTOCHECKPOINT_PAGES,
    ) -> None:
        self.url = url
        self.engine = make_engine(
            url, pool_size=pool_size, max_overflow=max_overflow, autocheckpoint=autocheckpoint
        )
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        path = self.engine.url.database if self.dialect == "sqlite" else None
        self.writers = _writer_queue(path) if path and path != ":memory:" else None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def write_turn(self) -> contextlib.AbstractContextManager[None]:
        """On SQLite, wait for this process's turn to write (see WriterQueue); else nothing."""
        return self.writers.turn() if self.writers else contextlib.nullcontext()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on any exception."""
        with self.write_turn(), self.sessions() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def autocommit_cursor(self, *, write: bool = True) -> Iterator[Any]:
        """A driver cursor on a pooled connection, each statement its own transaction (in the
        writers' queue unless ``write`` is False: a read needs no lock).

        For the webhook's store, the one statement of a request: without SQLAlchemy's
        statement handling and without BEGIN and COMMIT round trips, it measured 0.53-0.61 ms
        of CPU down to 0.13-0.18 ms. Parameters use the driver's placeholders
        (``self.placeholder``). A connection that raised is discarded, not reused.
        """
        pooled = self.engine.raw_connection()
        driver: Any = pooled.driver_connection
        postgres = self.dialect == "postgresql"
        try:
            if postgres:
                driver.autocommit = True  # SQLite's connections are in autocommit already
            cursor = driver.cursor()
            try:
                with self.write_turn() if write else contextlib.nullcontext():
                    yield cursor
            finally:
                cursor.close()
            if postgres:
                driver.autocommit = False
        except BaseException:
            pooled.invalidate()
            raise
        finally:
            pooled.close()

    def checkpoint(self) -> int:
        """SQLite: copy what the WAL holds back into the database, beside the writers
        (PASSIVE: it waits for nobody and nobody waits for it); the number of WAL frames
        that are now in the database. Elsewhere: nothing, 0."""
        if self.dialect != "sqlite":
            return 0
        pooled = self.engine.raw_connection()
        driver: Any = pooled.driver_connection
        try:
            _busy, _frames, copied = driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            pooled.close()
        return max(int(copied), 0)

    @property
    def placeholder(self) -> str:
        return "%s" if self.dialect == "postgresql" else "?"

    def dispose(self) -> None:
        self.engine.dispose()


@functools.cache
def _insert_ignore_statement(table: Any, dialect: str) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(table).on_conflict_do_nothing().returning(table.c.id)


def id_list(ids: Sequence[int], dialect: str) -> str:
    """A batch's ids as one text parameter: a JSON array for SQLite's json_each, an array
    literal for PostgreSQL. One parameter instead of 1,000 parses and plans faster, and
    written here it costs less than the driver's dumping of a list (psycopg's: 7 ms a batch,
    profiled)."""
    if dialect == "postgresql":
        return "{" + ",".join(map(str, ids)) + "}"
    return orjson.dumps(list(ids)).decode()


@functools.cache
def host_lock_path(database_url: str, purpose: str) -> str:
    """A file every process of this host working on this database shares, for ``purpose``
    (an flock, a time stamp): in the temporary directory, named by a digest of the URL (no
    secret of it in a file name)."""
    digest = hashlib.sha256(database_url.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"waconv-{purpose}-{digest}.lock")


def oldest_received(db: Database, model: Any, waiting: Any) -> datetime | None:
    """When the first row (by id) of ``model`` matching ``waiting`` was received; None when no
    row matches. A plain read on the driver's cursor: a session's transaction on SQLite would
    take the write lock (BEGIN IMMEDIATE), outside the writers' queue."""
    with db.autocommit_cursor(write=False) as cursor:
        cursor.execute(_oldest_sql(model, waiting, db.dialect))
        row = cursor.fetchone()
    return None if row is None or row[0] is None else from_driver_time(row[0])


@functools.cache
def _oldest_sql(model: Any, waiting: Any, dialect: str) -> str:
    # ``waiting`` is a module's constant condition: cached by identity, compiled once.
    stmt = select(model.received_at).where(waiting).order_by(model.id).limit(1)
    engine_dialect = (postgresql.dialect if dialect == "postgresql" else sqlite.dialect)()
    return str(stmt.compile(dialect=engine_dialect, compile_kwargs={"literal_binds": True}))


def insert_or_ignore(session: Session, model: Any, values: dict[str, Any]) -> int | None:
    """INSERT … ON CONFLICT DO NOTHING RETURNING id: the new id, or None if a row was there.

    On PostgreSQL a racing insert of the same key waits for the other transaction and then
    yields None, so of two concurrent redeliveries exactly one takes effect.

    Hot path of webhook processing: one statement per table and dialect, built once and run
    through Core with the values as parameters (the ORM's per-call statement building cost
    more than the database work).
    """
    connection = session.connection()
    stmt = _insert_ignore_statement(model.__table__, connection.dialect.name)
    new_id: int | None = connection.execute(stmt, values).scalar_one_or_none()
    return new_id


@functools.cache
def _insert_object_statement(model: Any, dialect: str) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(model).on_conflict_do_nothing().returning(model)
    # A new row has no children: its collections load when read, not each with a SELECT
    # after the INSERT (a "selectin" collection did, for every new conversion).
    collections = [r.class_attribute for r in sa_inspect(model).relationships if r.uselist]
    return statement.options(*(lazyload(c) for c in collections))


def insert_object_or_ignore(session: Session, model: Any, values: dict[str, Any]) -> Any:
    """INSERT … ON CONFLICT DO NOTHING RETURNING the row as an ORM object, or None if a row
    was there: the new object without a SELECT after the INSERT."""
    statement = _insert_object_statement(model, session.get_bind().dialect.name)
    return session.scalars(statement, [values]).first()
