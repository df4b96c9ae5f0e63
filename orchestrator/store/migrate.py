"""Versioned migrations (Alembic, scripts in `migrations/versions/`), run on start: `open_store` upgrades the
database to the newest schema before anything reads it. `duet admin db downgrade` and the migration test go
the other way. Alembic runs on the async engine's connection (its sync facade), so no second driver is needed.
On PostgreSQL several orchestrators may start at once: an advisory lock makes their upgrades take turns.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).with_name("migrations")


def _config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


# A PostgreSQL advisory lock's key (any constant, the same in every orchestrator): servers starting together
# migrate one after another, and the later ones find the schema already at head.
MIGRATION_LOCK = 0x64756574


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":  # held until this transaction ends
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        await conn.run_sync(lambda c: command.upgrade(_config(c), revision))


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(_config(c), revision))


async def current(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
