"""Spend and loop control: budgets set from the CLI, per-issue guards, tasks by finish time.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_finished", "tasks", ["finished_at"])
    op.create_index("ix_tasks_issue", "tasks", ["repo", "number"])
    op.create_table(
        "budgets",
        sa.Column("scope", sa.String(63), primary_key=True),
        sa.Column("period", sa.String(8), primary_key=True),
        sa.Column("usd", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "issue_guards",
        sa.Column("repo", sa.String(200), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True),
        sa.Column("since", sa.Float, nullable=False),
        sa.Column("review_rounds", sa.Integer, nullable=False, server_default="0"),
        sa.Column("tripped_at", sa.Float),
        sa.Column("reason", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("issue_guards")
    op.drop_table("budgets")
    op.drop_index("ix_tasks_issue", table_name="tasks")
    op.drop_index("ix_tasks_finished", table_name="tasks")
