"""Engine, sessions and migrations.

SQLite runs in WAL mode with synchronous=FULL: a COMMIT that returned is on
disk, which is what lets a receiver say 250 right after it. PostgreSQL is
reached through psycopg for scale-out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from maild.errors import ConfigError, TransientError


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str, base_dir: Path | None = None) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:" and not Path(path).is_absolute() and base_dir is not None:
            url = f"sqlite:///{(base_dir / path).resolve()}"
        db_path = Path(url.removeprefix("sqlite:///"))
        if not db_path.parent.exists():
            raise ConfigError(f"database.url = {url!r}: the directory {db_path.parent} does not exist")
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
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


@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        with session.begin():
            yield session
