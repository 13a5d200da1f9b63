"""Work stealing: a queued task moved to an idle peer records where it came from and when.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_notes") as batch:
        batch.add_column(sa.Column("moved_from", sa.String(63)))
        batch.add_column(sa.Column("moved_at", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("task_notes") as batch:
        batch.drop_column("moved_at")
        batch.drop_column("moved_from")
