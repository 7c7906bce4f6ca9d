"""`maild db copy`: every row of one maild database into another (SQLite → PostgreSQL).

The source is read in one transaction (one consistent snapshot, even if a daemon
still writes to it); the target is migrated to the newest schema first, must be
empty, and is written in one transaction, so a copy that fails half-way leaves
nothing behind and can simply be run again. Afterwards PostgreSQL's id sequences
are moved past the copied ids and SQLite's article index is rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, Integer, func, select, text
from sqlmodel import Session, SQLModel
from sqlmodel import select as select_rows

from maild import kb
from maild.errors import UserError
from maild.storage import models
from maild.storage.db import check_current, transaction, upgrade

CHUNK = 500


@dataclass
class Copied:
    table: str
    rows: int


def tables():
    return list(SQLModel.metadata.sorted_tables)  # parents before children


def count_rows(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in tables()}


def copy_database(source: Engine, target: Engine,
                  progress: Callable[[str, int, int], None] = lambda table, done, total: None) -> list[Copied]:
    """Copy every row; `progress(table, rows_done, rows_in_table)` after each chunk."""
    check_current(source)
    upgrade(target)
    if source.url == target.url:
        raise UserError("the target is the configured database itself: give another URL")
    not_empty = {name: n for name, n in count_rows(target).items() if n}
    if not_empty:
        listed = ", ".join(f"{name} ({n})" for name, n in sorted(not_empty.items()))
        raise UserError(f"the target database is not empty: {listed}; copy into a new, empty database")
    copied: list[Copied] = []
    with source.connect() as src, src.begin(), transaction(target) as dst_session:
        dst = dst_session.connection()
        totals = {t.name: src.execute(select(func.count()).select_from(t)).scalar_one() for t in tables()}
        for table in tables():
            done = 0
            progress(table.name, done, totals[table.name])
            pk = list(table.primary_key.columns)
            result = src.execution_options(yield_per=CHUNK).execute(select(table).order_by(*pk))
            for chunk in result.mappings().partitions():
                dst.execute(table.insert(), [dict(row) for row in chunk])
                done += len(chunk)
                progress(table.name, done, totals[table.name])
            copied.append(Copied(table.name, done))
        _after_copy(dst_session)
    return copied


def _after_copy(session: Session) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # Rows came with their ids: move each serial sequence past them, or the next insert collides.
        for table in tables():
            pk = list(table.primary_key.columns)
            if len(pk) == 1 and isinstance(pk[0].type, Integer):
                session.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{pk[0].name}'), "
                    f"COALESCE((SELECT MAX({pk[0].name}) FROM {table.name}), 0) + 1, false)"
                ))
    elif dialect == "sqlite":
        for article in session.exec(select_rows(models.Article)):
            kb.index(session, article)
