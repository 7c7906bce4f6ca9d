"""Engine, sessions and migrations.

SQLite runs in WAL mode with synchronous=FULL: a COMMIT that returned is on
disk, which is what lets a receiver say 250 right after it. PostgreSQL is
reached through psycopg for scale-out.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from maild.errors import ConfigError, TransientError


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # pysqlite's own transaction handling issues no BEGIN before a SAVEPOINT, so a
    # RELEASE would commit (and fsync) every savepoint; SQLAlchemy's documented
    # recipe: turn it off and BEGIN ourselves (see _sqlite_begin).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA secure_delete=ON")  # erased personal data is overwritten, not left in free pages
    cur.close()


def _sqlite_begin(conn) -> None:
    # Writers (transaction()) BEGIN IMMEDIATE: it takes the write lock up front, where
    # a deferred transaction that reads, then writes after another connection
    # committed, fails at once with SQLITE_BUSY_SNAPSHOT. Readers (the web pages)
    # stay deferred, so WAL lets them run side by side.
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


# Held strongly: an engine dropped without dispose() leaves its pooled connections to the garbage
# collector, which closes them rudely (and psycopg warns).
_engines: list[Engine] = []


def dispose_all(forget: bool = False) -> None:
    """Close every pooled connection of every engine made here (end of a CLI command, of a test).

    The engines stay usable (a later use reconnects) and tracked, unless `forget`.
    """
    for engine in _engines:
        engine.dispose()
    if forget:
        _engines.clear()


def make_engine(url: str, base_dir: Path | None = None, *, synchronous: str = "FULL") -> Engine:
    """`synchronous="NORMAL"` (SQLite only) is for writers whose commits may ride on the next FULL one
    (the processor's worker: its work is redone from the inbox if a power cut takes it)."""
    engine = _make_engine(url, base_dir)
    if synchronous != "FULL" and engine.dialect.name == "sqlite":
        event.listen(engine, "connect", lambda conn, _r: conn.execute(f"PRAGMA synchronous={synchronous}"))
    _engines.append(engine)
    return engine


def _make_engine(url: str, base_dir: Path | None = None) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:" and not Path(path).is_absolute() and base_dir is not None:
            url = f"sqlite:///{(base_dir / path).resolve()}"
        db_path = Path(url.removeprefix("sqlite:///"))
        if not db_path.parent.exists():
            raise ConfigError(f"database.url = {url!r}: the directory {db_path.parent} does not exist")
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("maild.storage") / "migrations"))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    try:
        command.upgrade(alembic_config(engine), revision)
    except OperationalError as exc:
        raise TransientError(f"cannot migrate the database: {exc.orig}") from None


def check_current(engine: Engine) -> None:
    """Refuse to run on a database that is not at the newest migration."""
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise TransientError(f"cannot open the database: {exc.orig}") from None
    if current != head:
        raise ConfigError(
            f"the database is at migration {current or 'none'}, not {head}: run 'maild db upgrade'"
        )


class WriteGate:
    """In-process order for SQLite's single writer.

    Threads of one process that would otherwise meet in SQLite's busy handler
    (which sleeps up to 100 ms between tries) queue on a lock instead, which
    wakes the next one at once. `waiting` lets a long writer (the processor)
    commit early when a receiver waits to say 250. PostgreSQL needs no gate.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._waiting = [0, 0]  # this process's writers queued or holding: [urgent, priority]
        # Two ints shared with the processor's worker process (maild serve; a ctypes array in a
        # mapping both processes see): the same counts for the other process's writers.
        self.shared = None
        # The worker's way out of a count its parent left behind when it was killed mid-write.
        self.give_up: Callable[[], bool] | None = None
        self._lock = threading.Lock()
        self._cond = threading.Condition()

    def share(self, counts) -> None:
        """Publish this process's counts in `counts` (a new worker's mapping) from now on."""
        with self._cond:
            counts[0], counts[1] = self._waiting  # writers holding now release into the new mapping
            self.shared = counts

    def _counts(self):
        # Shared: both processes' writers count there (each adds its own); else this process's.
        return self.shared if self.shared is not None else self._waiting

    @property
    def waiting(self) -> int:
        """Writers that go before the processor: receivers (urgent) and the sender."""
        counts = self._counts()
        return counts[0] + counts[1]

    @property
    def urgent(self) -> int:
        """Receivers waiting to commit before they answer 250: the processor lets them in at once."""
        return self._counts()[0]

    def _add(self, slot: int, n: int) -> None:
        # Called under self._cond: this process's threads add one at a time (the worker only reads).
        self._waiting[slot] += n
        if self.shared is not None:
            self.shared[slot] += n

    @contextlib.contextmanager
    def hold(self, priority: bool = False, urgent: bool = False) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        slot = 0 if urgent else 1
        first = priority or urgent
        with self._cond:
            if first:
                self._add(slot, 1)
            else:
                # threading.Lock is not fair: without this the processor, looping,
                # would take the lock back before a waiting writer wakes. A waiter in
                # another process cannot notify us: look again every millisecond.
                while self.waiting > 0:
                    if self.give_up is not None and self.give_up():
                        raise TransientError("the daemon that shares this database's writer is gone")
                    self._cond.wait(0.001 if self.shared is not None else None)
        self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()
            if first:
                with self._cond:
                    self._add(slot, -1)
                    self._cond.notify_all()


_gates: weakref.WeakKeyDictionary[Engine, WriteGate] = weakref.WeakKeyDictionary()


def gate(engine: Engine) -> WriteGate:
    found = _gates.get(engine)
    if found is None:
        found = _gates[engine] = WriteGate(engine.dialect.name == "sqlite")
    return found


@contextlib.contextmanager
def write_connection(engine: Engine, *, priority: bool = False, urgent: bool = False) -> Iterator[Connection]:
    """A connection in a write transaction, in its turn at the write gate: commits on success.

    On SQLite the write lock is taken up front (BEGIN IMMEDIATE, see begin_immediate);
    `urgent` is a receiver about to say 250, `priority` the outbox sender (see WriteGate).
    """
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    with gate(engine).hold(priority, urgent), engine.connect() as conn:
        trans = begin_immediate(conn)
        try:
            yield conn
        except BaseException:
            trans.rollback()
            raise
        trans.commit()


@contextlib.contextmanager
def transaction(engine: Engine, *, autoflush: bool = True, priority: bool = False) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on any error.

    `priority`: a short write that must not starve behind the processor (the outbox sender's
    claims and delivery records); the processor commits between two messages to let it in.
    """
    if engine.dialect.name != "sqlite":
        with Session(engine, expire_on_commit=False, autoflush=autoflush) as session, session.begin():
            yield session
        return
    with write_connection(engine, priority=priority) as conn, \
            Session(conn, expire_on_commit=False, autoflush=autoflush) as session:
        yield session
        session.flush()


LOCK_WAIT_SECONDS = 30.0


def begin_immediate(conn):
    """BEGIN IMMEDIATE on a SQLite connection, trying again every half millisecond.

    SQLite's own busy handler sleeps 1, 2, 5, 10, … 100 ms between tries, so a writer could
    wait far longer than the lock was held, and hold this process's write gate meanwhile (a
    receiver queued behind it). The other process (the processor's worker) lets go between
    two messages once it sees a writer waiting; here we take the lock at once when it does.
    """
    raw = conn.connection.driver_connection
    raw.execute("PRAGMA busy_timeout=0")
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    try:
        while True:
            try:
                return conn.execution_options(sqlite_begin="IMMEDIATE").begin()
            except OperationalError as exc:
                if "locked" not in str(exc.orig) and "busy" not in str(exc.orig):
                    raise
                if conn.in_transaction():
                    conn.rollback()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.0005)
    finally:
        raw.execute("PRAGMA busy_timeout=30000")
