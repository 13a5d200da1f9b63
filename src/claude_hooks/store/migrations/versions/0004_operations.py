"""Pending deliveries, recorded rejections, task notes (retries, who cancelled, pruned logs),
and a pruned mark on deliveries.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("pruned_at", sa.Float))
    op.create_table(
        "pending_deliveries",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_pending_deliveries_next", "pending_deliveries", ["next_attempt_at"])
    op.create_table(
        "rejections",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("remote", sa.String(100)),
        sa.Column("event", sa.String(64)),
        sa.Column("delivery_id", sa.String(100)),
        sa.Column("user_agent", sa.String(200)),
        sa.Column("content_type", sa.String(200)),
        sa.Column("content_length", sa.String(32)),
        sa.Column("size", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_rejections_received", "rejections", ["received_at"])
    op.create_table(
        "task_notes",
        sa.Column("task_id", sa.String(32), primary_key=True),
        sa.Column("retry_of", sa.String(32)),
        sa.Column("cancelled_by", sa.Text),
        sa.Column("cancelled_by_delivery", sa.String(100)),
        sa.Column("log_pruned_at", sa.Float),
    )
    op.create_index("ix_task_notes_retry_of", "task_notes", ["retry_of"])
    op.create_index("ix_task_notes_delivery", "task_notes", ["cancelled_by_delivery"])


def downgrade() -> None:
    op.drop_table("task_notes")
    op.drop_table("rejections")
    op.drop_table("pending_deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("pruned_at")
