"""The store's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL. The migrations in
`migrations/versions/` create them; a test checks that upgrading an empty database gives exactly these.

Every table a tenant owns rows in carries `tenant_id`, and every query filters on it (`store.py`). Ids are
type-prefixed and sortable by creation time (`ids.py`), so lists page on the id alone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no zone: it is stored as naive UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


ID = sa.String(40)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("tier", sa.String(20), nullable=False),
    sa.Column("webhook_secret", sa.String(100), nullable=False),
    sa.Column("max_concurrent_conversations", sa.Integer, nullable=False),
    sa.Column("max_minutes_per_day", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("prefix", sa.String(20), nullable=False),
    sa.Column("salt", sa.LargeBinary(32), nullable=False),
    sa.Column("digest", sa.LargeBinary(64), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime, nullable=True),
    sa.Column("last_used_at", UtcDateTime, nullable=True),
)

personas = sa.Table(
    "personas",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("body", JSON, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

faces = sa.Table(
    "faces",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("persona_id", ID, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("shutdown_reason", sa.String(40), nullable=True),
    sa.Column("settings", JSON, nullable=False),
    sa.Column("callback_url", sa.String(2000), nullable=True),
    sa.Column("token_digest", sa.LargeBinary(64), nullable=False),
    sa.Column("token_expires_at", UtcDateTime, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=True),
    sa.Column("ended_at", UtcDateTime, nullable=True),
    # while active: the orchestrator running its session (`api.instance_id`), where the others reach its REST API
    # (requests for the conversation are forwarded there), and until when it vouches for it: each holder renews
    # its live conversations; one whose holder stopped renewing is ended `error` by any orchestrator's sweeper
    sa.Column("holder", sa.String(80), nullable=True),
    sa.Column("holder_url", sa.String(2000), nullable=True),
    sa.Column("held_until", UtcDateTime, nullable=True),
    sa.Index("ix_conversations_tenant_id_id", "tenant_id", "id"),
    sa.Index("ix_conversations_tenant_id_status", "tenant_id", "status"),
    sa.Index("ix_conversations_status_held_until", "status", "held_until"),
)

utterances = sa.Table(
    "utterances",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", ID, sa.ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("role", sa.String(10), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("t", sa.Float, nullable=False),
    sa.Column("perception", JSON, nullable=True),
    sa.UniqueConstraint("conversation_id", "seq"),
)

webhook_messages = sa.Table(
    "webhook_messages",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("conversation_id", ID, nullable=False, index=True),
    sa.Column("event_type", sa.String(60), nullable=False),
    sa.Column("url", sa.String(2000), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False),
    # while pending: when the next attempt is due (a deliverer's claim moves it past the claim's lease)
    sa.Column("next_attempt_at", UtcDateTime, nullable=True, index=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("delivered_at", UtcDateTime, nullable=True),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", ID, sa.ForeignKey("webhook_messages.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("duration_ms", sa.Float, nullable=False),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("operation", sa.String(60), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_digest", sa.String(64), nullable=False),  # the same key with another body is a conflict
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

# ---- the intelligence layer ---------------------------------------------------------------------------------

documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("tags", JSON, nullable=False),
    sa.Column("content_type", sa.String(40), nullable=False),  # text | markdown | html | pdf
    sa.Column("size", sa.Integer, nullable=False),  # bytes given
    sa.Column("status", sa.String(20), nullable=False),  # processing | ready | failed
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("chunks", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

chunks = sa.Table(
    "chunks",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("document_id", ID, sa.ForeignKey("documents.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("heading", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),  # float32 little-endian, L2-normalised
    # the chunk's sentences' vectors, one after the other (the `quality` strategy's re-ranking); empty for one
    sa.Column("sentence_vectors", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint("document_id", "seq"),
)

memories = sa.Table(
    "memories",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("store", sa.String(200), nullable=False),  # the conversation's `memory_store` key (one user)
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("pinned", sa.Boolean, nullable=False),
    sa.Column("conversation_id", ID, nullable=True),  # the conversation it was learnt from (None: added by API)
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index("ix_memories_tenant_id_store", "tenant_id", "store"),
)

guardrails = sa.Table(
    "guardrails",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("body", JSON, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

objectives = sa.Table(
    "objectives",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("body", JSON, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)
