"""Alembic environment. Migrations run through ``models.migrate`` (``main.py db upgrade``, and start-up for a
fresh database), which hands over a connection of the project's own async engine."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

import models.all_tables  # noqa: F401  (every model registered on Base.metadata)
from models.base import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


_run(context.config.attributes["connection"])
