"""Sessions any node can resume: Claude Code transcripts mirrored through the SDK's
SessionStore, and each session's worktree state as a git bundle.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "transcript_entries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("project_key", sa.String(500), nullable=False),
        sa.Column("session_id", sa.String(100), nullable=False),
        sa.Column("subpath", sa.String(500), nullable=False),
        sa.Column("uuid", sa.String(100)),
        sa.Column("entry", sa.JSON, nullable=False),
        sa.Column("mtime", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_transcript_entries_key",
        "transcript_entries",
        ["project_key", "session_id", "subpath", "id"],
    )
    op.create_index(
        "ux_transcript_entries_uuid",
        "transcript_entries",
        ["project_key", "session_id", "subpath", "uuid"],
        unique=True,
    )
    op.create_table(
        "worktree_states",
        sa.Column("session_key", sa.String(300), primary_key=True),
        sa.Column("branch", sa.String(255)),
        sa.Column("head", sa.String(64), nullable=False),
        sa.Column("worktree", sa.String(64), nullable=False),
        sa.Column("index_commit", sa.String(64), nullable=False),
        sa.Column("bundle", sa.LargeBinary, nullable=False),
        sa.Column("node", sa.String(63)),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("worktree_states")
    op.drop_index("ux_transcript_entries_uuid", "transcript_entries")
    op.drop_index("ix_transcript_entries_key", "transcript_entries")
    op.drop_table("transcript_entries")
