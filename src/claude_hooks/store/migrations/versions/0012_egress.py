"""What a sandboxed task's egress proxy saw: refused hosts and the metered API usage.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_egress",
        sa.Column("task_id", sa.String(32), primary_key=True),
        sa.Column("type", sa.String(63), nullable=False),
        sa.Column("blocked_total", sa.Integer, nullable=False),
        sa.Column("blocked", sa.Text, nullable=False),
        sa.Column("metered", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("task_egress")
