"""Alembic's entry: migrations always run on a connection `orchestrator.store.migrate` hands over."""

from __future__ import annotations

from alembic import context

from orchestrator.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through orchestrator.store.migrate (duet admin db ...), not the alembic CLI")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
