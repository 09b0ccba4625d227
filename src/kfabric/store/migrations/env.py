"""Alembic environment: runs against the engine the caller put in ``config.attributes['engine']``."""

from __future__ import annotations

from alembic import context

from kfabric.store.tables import Base

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
