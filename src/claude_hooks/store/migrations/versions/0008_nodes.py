"""Nodes: every `serve` on one database, the instances each holds, the node running each
task, and the leader of each background duty.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("incarnation", sa.String(32), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("url", sa.String(300)),
        sa.Column("capacity", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_seconds", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("stopped_at", sa.Float),
        sa.Column("dead_at", sa.Float),
    )
    op.create_table(
        "leaders",
        sa.Column("duty", sa.String(32), primary_key=True),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("incarnation", sa.String(32), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("node", sa.String(63)))
        batch.add_column(sa.Column("pinned_node", sa.String(63)))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("node", sa.String(63)))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("node")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("pinned_node")
        batch.drop_column("node")
    op.drop_table("leaders")
    op.drop_table("nodes")
