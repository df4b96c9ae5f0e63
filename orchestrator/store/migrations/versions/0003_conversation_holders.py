"""conversation holders: which orchestrator runs a live conversation, where it is reached, until when

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 10:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("holder", sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column("holder_url", sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column("held_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_conversations_status_held_until", ["status", "held_until"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index("ix_conversations_status_held_until")
        batch_op.drop_column("held_until")
        batch_op.drop_column("holder_url")
        batch_op.drop_column("holder")
