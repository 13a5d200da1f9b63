"""Webhook intake: deliveries, and the forge state the flows keep.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("flavor", sa.String(16), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64)),
        sa.Column("repo", sa.String(200)),
        sa.Column("number", sa.Integer),
        sa.Column("sender", sa.String(100)),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("task_ids", sa.JSON, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("replay_of", sa.String(100)),
    )
    op.create_index("ix_deliveries_received", "deliveries", ["received_at"])
    op.create_table(
        "assignments",
        sa.Column("repo", sa.String(200), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True),
        sa.Column("type", sa.String(63), primary_key=True),
    )
    op.create_table(
        "pull_links",
        sa.Column("repo", sa.String(200), primary_key=True),
        sa.Column("pr_number", sa.Integer, primary_key=True),
        sa.Column("author_type", sa.String(63), nullable=False),
        sa.Column("issue_number", sa.Integer, nullable=False),
        sa.Column("head_sha", sa.String(64), nullable=False),
        sa.Column("open", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_pull_links_head", "pull_links", ["repo", "head_sha"])
    op.create_table(
        "fix_attempts",
        sa.Column("repo", sa.String(200), primary_key=True),
        sa.Column("pr_number", sa.Integer, primary_key=True),
        sa.Column("head_sha", sa.String(64), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_table(
        "ci_watches",
        sa.Column("repo", sa.String(200), primary_key=True),
        sa.Column("pr_number", sa.Integer, primary_key=True),
        sa.Column("head_sha", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("ci_watches", "fix_attempts", "pull_links", "assignments", "deliveries"):
        op.drop_table(table)
