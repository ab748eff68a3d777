"""Engine and sessions for the metadata database, with bounded retries when it is down."""

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from store.retry import with_retries

T = TypeVar("T")


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached after retrying."""


def sqlite_url(path: Path) -> str:
    """SQLAlchemy URL of an SQLite file."""
    return f"sqlite:///{path.resolve()}"


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys and a busy timeout for concurrent use."""
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def is_transient_db_error(exc: Exception) -> bool:
    """A lost, refused or busy connection (worth retrying), not an error in the statement or the
    schema (a missing table is not fixed by waiting)."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    original = exc.orig
    if isinstance(original, sqlite3.Error):
        return original.sqlite_errorname.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    if isinstance(original, psycopg.Error):
        # No SQLSTATE: the client could not connect. Class 08: connection; 53: resources; 57:
        # operator intervention (a server shutting down); serialization failures and deadlocks.
        state = original.sqlstate
        return state is None or state[:2] in ("08", "53", "57") or state in ("40001", "40P01")
    return isinstance(exc, OperationalError)


def with_db_retry(
    fn: Callable[[], T], *, retries: int = 5, backoff_s: float = 0.5, what: str = "query"
) -> T:
    """Run `fn` (a whole transaction) again with exponential backoff when the connection fails."""
    try:
        return with_retries(
            fn, transient=is_transient_db_error, retries=retries, backoff_s=backoff_s, what=what
        )
    except DBAPIError as exc:
        if not is_transient_db_error(exc):
            raise
        raise DatabaseUnavailable(
            f"database did not answer {what} after {retries + 1} tries: {exc.orig}; check "
            "that it is running and EDITLOOP_STORE__DATABASE_URL is right"
        ) from exc


def check_connection(engine: Engine, *, retries: int = 5, backoff_s: float = 0.5) -> None:
    """Fail with `DatabaseUnavailable` unless a trivial query answers within the retries."""

    def ping() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    with_db_retry(ping, retries=retries, backoff_s=backoff_s, what="a connection check")


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session


def insert_ignore(
    session: Session, model: type, rows: list[dict[str, Any]], *, conflict_columns: list[str]
) -> int:
    """Insert `rows`, skipping those colliding on `conflict_columns`; returns how many went in."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ValueError(f"unsupported database dialect {dialect!r}: use PostgreSQL or SQLite")
    # RETURNING lists exactly the rows that went in (rowcount is not reliable for this).
    statement = (
        insert(model)
        .values(rows)
        .on_conflict_do_nothing(index_elements=conflict_columns)
        .returning(model.id)  # type: ignore[attr-defined]
    )
    return len(session.execute(statement).all())
