"""Alembic environment: the engine comes from maild (storage/db.py), never from an ini file."""

from alembic import context
from sqlmodel import SQLModel

from maild.storage import models  # noqa: F401  (registers the tables)

engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
