"""PostgreSQL: deliveries' bodies compressed with lz4 rather than pglz.

A delivery's body (JSON, 8 KB and more) is compressed when its row is written; with pglz that
was about a third of the server's time to record a run of deliveries (32 deferred at once:
2.96 ms with pglz, 1.89 ms with lz4, bench/history.md). Rows written before keep their
compression; a server built without lz4 keeps pglz. SQLite does not compress.

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def _compression(method: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "DO $$ BEGIN"
        f" ALTER TABLE deliveries ALTER COLUMN body SET COMPRESSION {method};"
        " EXCEPTION WHEN feature_not_supported THEN"
        f"  RAISE NOTICE 'compression {method} is not supported by this server: kept as it was';"
        " END $$"
    )


def upgrade() -> None:
    _compression("lz4")


def downgrade() -> None:
    _compression("pglz")
