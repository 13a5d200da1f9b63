"""Outcome records: the sessions the agents worked (variant, model, interventions) and the
agents' pull requests (opened, review rounds, first CI verdict, approved, merged, closed), and
the weeks whose summary was posted.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outcome_sessions",
        sa.Column("session_key", sa.String(300), primary_key=True),
        sa.Column("type", sa.String(63), nullable=False),
        sa.Column("repo", sa.String(200), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("variant", sa.String(63)),
        sa.Column("model", sa.String(100)),
        sa.Column("first_at", sa.Float, nullable=False),
        sa.Column("assigned_at", sa.Float),
        sa.Column("commands", sa.Integer, nullable=False, server_default="0"),
        sa.Column("stops", sa.Integer, nullable=False, server_default="0"),
        sa.Column("escalations", sa.Integer, nullable=False, server_default="0"),
        sa.Column("human_commits", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_outcome_sessions_first", "outcome_sessions", ["first_at"])
    op.create_index("ix_outcome_sessions_issue", "outcome_sessions", ["repo", "number"])
    op.create_table(
        "outcome_pulls",
        sa.Column("repo", sa.String(200), primary_key=True),
        sa.Column("pr_number", sa.Integer, primary_key=True),
        sa.Column("session_key", sa.String(300), nullable=False),
        sa.Column("type", sa.String(63), nullable=False),
        sa.Column("opened_at", sa.Float, nullable=False),
        sa.Column("first_head", sa.String(64), nullable=False),
        sa.Column("first_ci", sa.Boolean),
        sa.Column("review_rounds", sa.Integer, nullable=False, server_default="0"),
        sa.Column("approved_at", sa.Float),
        sa.Column("merged_at", sa.Float),
        sa.Column("closed_at", sa.Float),
    )
    op.create_index("ix_outcome_pulls_session", "outcome_pulls", ["session_key"])
    op.create_table(
        "outcome_summaries",
        sa.Column("week", sa.String(16), primary_key=True),
        sa.Column("posted_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("outcome_summaries")
    op.drop_table("outcome_pulls")
    op.drop_table("outcome_sessions")
