"""Forge commands: paused sessions, the refusals already sent per sender and issue, and the
labels last seen on each issue (label triggers), living comments (one per task, edited), and
steering messages sent into running tasks.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "steers",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(32), nullable=False, index=True),
        sa.Column("sender", sa.String(255), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("comment_id", sa.BigInteger),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("delivered_at", sa.Float),
        sa.Column("followed_up_at", sa.Float),
    )
    op.add_column("outbox", sa.Column("living_key", sa.String(64)))
    op.create_table(
        "living_comments",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("comment_id", sa.BigInteger, nullable=False),
        sa.Column("written_at", sa.Float, nullable=False),
    )
    op.create_table(
        "paused_sessions",
        sa.Column("session_key", sa.String(300), primary_key=True),
        sa.Column("paused_by", sa.String(255), nullable=False),
        sa.Column("paused_at", sa.Float, nullable=False),
    )
    op.create_table(
        "issue_labels",
        sa.Column("repo", sa.String(200), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
    )
    op.create_table(
        "command_refusals",
        sa.Column("repo", sa.String(200), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True),
        sa.Column("sender", sa.String(255), primary_key=True),
        sa.Column("refused_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("command_refusals")
    op.drop_table("issue_labels")
    op.drop_table("living_comments")
    op.drop_table("steers")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("living_key")
    op.drop_table("paused_sessions")
