"""Every run of a task: where and when it ran, how it ended, where its output begins in the log.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_runs",
        sa.Column("task_id", sa.String(32), primary_key=True),
        sa.Column("run", sa.Integer, primary_key=True),
        sa.Column("node", sa.String(63)),
        sa.Column("agent", sa.String(63), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("outcome", sa.String(16)),
        sa.Column("error", sa.Text),
        sa.Column("log_offset", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("task_runs")
