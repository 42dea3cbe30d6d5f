"""Transactions shared by the parts of `RegistryStore`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session


class StoreBase:
    """One engine; `_read()` gives a session, `_write()` a session inside one committed transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # SQLite takes one writer at a time and fails a deferred transaction that would have to
        # wait; serialising this process's writes avoids "database is locked" under concurrency.
        self._write_lock: Any = threading.Lock() if engine.dialect.name == "sqlite" else nullcontext()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._write_lock, Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session
