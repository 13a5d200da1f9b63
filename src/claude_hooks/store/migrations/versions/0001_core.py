"""Core tables: agents, tasks, cursors, sessions, signals.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("type", sa.String(63), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("type", sa.String(63), nullable=False),
        sa.Column("agent", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("session_key", sa.String(300), nullable=False),
        sa.Column("repo", sa.String(200), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("enqueued_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("exit_code", sa.Integer),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("cost_usd", sa.Float),
        sa.Column("claude_session_id", sa.String(100)),
        sa.Column("delivery_id", sa.String(100)),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("pid", sa.Integer),
        sa.Column("pid_start", sa.BigInteger),
    )
    op.create_index("ix_tasks_agent_state_seq", "tasks", ["agent", "state", "seq"])
    op.create_index("ix_tasks_state_seq", "tasks", ["state", "seq"])
    op.create_index("ix_tasks_seq", "tasks", ["seq"])
    op.create_index("ix_tasks_delivery", "tasks", ["delivery_id"])
    op.create_index("ix_tasks_session_key", "tasks", ["session_key"])
    op.create_index(
        "ux_tasks_running_session",
        "tasks",
        ["session_key"],
        unique=True,
        sqlite_where=sa.text("state = 'running'"),
        postgresql_where=sa.text("state = 'running'"),
    )
    op.create_table(
        "cursors",
        sa.Column("type", sa.String(63), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "sessions",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("claude_session_id", sa.String(100), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("total_cost_usd", sa.Float),
    )
    op.create_table(
        "signals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    for table in ("signals", "sessions", "cursors", "tasks", "agents"):
        op.drop_table(table)
