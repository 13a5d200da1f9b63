"""Elastic instances: which instances the leading node added (`agents.auto`, retired when
idle), and every change it made, with who, why and the wait that caused it.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("auto", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_table(
        "instance_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("type", sa.String(63), nullable=False),
        sa.Column("at", sa.Float, nullable=False, index=True),
        sa.Column("node", sa.String(63)),
        sa.Column("act", sa.String(16), nullable=False),
        sa.Column("names", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("wait_seconds", sa.Float, nullable=False),
        sa.Column("moved", sa.Integer, nullable=False, server_default="0"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("instance_changes")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("auto")
