"""The SQL engine every service with metadata uses (SQLite by default, any SQLAlchemy URL)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from sqlalchemy import Column, DateTime, event, exc, text
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Field, Session, SQLModel, create_engine, select

# The database cannot be reached right now (down, restarting, out of connections): worth retrying shortly.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (exc.OperationalError, exc.InterfaceError, exc.TimeoutError)
DATABASE_RETRY_AFTER_S = 1


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL and foreign keys, its folder is created."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def insert_once(engine: Engine, row: SQLModel, column: Any, key: object) -> bool:
    """Store `row` unless a row with `column == key` (a unique column) is stored; False when one is, even
    when another process stored it a moment ago (the unique constraint answers then)."""
    with Session(engine) as session:
        if session.exec(select(column).where(column == key)).first() is not None:
            return False
        session.add(row)
        try:
            session.commit()
        except exc.IntegrityError:
            return False
    return True


def new_id() -> str:
    """A short random id for rows a service creates (jobs, runs)."""
    return uuid.uuid4().hex[:16]


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...


@overload
def as_utc(value: None) -> None: ...


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything the services store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def timestamp_field(nullable: bool = True) -> Any:
    """A SQLModel field for a timezone-aware timestamp, empty until set."""
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable))
