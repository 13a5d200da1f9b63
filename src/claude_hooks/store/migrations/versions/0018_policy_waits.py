"""Repository policy: the broken policy files already told to each repository (one comment per
file version), and why a queued task waits for its concurrency group (seen from every node).

Revision ID: 0018
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_faults",
        sa.Column("repo", sa.String(200), primary_key=True),
        sa.Column("file_sha", sa.String(64), primary_key=True),
        sa.Column("noticed_at", sa.Float, nullable=False),
    )
    with op.batch_alter_table("task_notes") as batch:
        batch.add_column(sa.Column("group_wait", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("task_notes") as batch:
        batch.drop_column("group_wait")
    op.drop_table("policy_faults")
