"""Index tasks by session key first, so finding a key's pending task does not scan the queue.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_tasks_session_key", table_name="tasks")
    op.create_index("ix_tasks_session_state", "tasks", ["session_key", "state", "kind", "seq"])


def downgrade() -> None:
    op.drop_index("ix_tasks_session_state", table_name="tasks")
    op.create_index("ix_tasks_session_key", "tasks", ["session_key"])
