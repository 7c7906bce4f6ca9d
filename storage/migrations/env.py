"""Alembic environment: the engine comes from maild (storage/db.py), never from an ini file."""

from alembic import context
from sqlmodel import SQLModel

from maild.storage import models  # noqa: F401  (registers the tables)

engine = context.config.attributes["engine"]

# Created by hand in the migrations (full-text search), not described by the models.
_HAND_MADE = ("article_fts", "ix_article_search")


def include_name(name, type_, parent_names) -> bool:
    return not (name or "").startswith(_HAND_MADE)


with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
