"""Each instance's queue length, kept by triggers on `tasks`, so placing a task reads one row
per candidate instead of counting its queue (O(queue length) per delivery before).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ENTER = (
    "INSERT INTO queue_lengths (agent, queued) VALUES (NEW.agent, 1) "
    "ON CONFLICT (agent) DO UPDATE SET queued = queue_lengths.queued + 1"
)
_LEAVE = "UPDATE queue_lengths SET queued = queued - 1 WHERE agent = OLD.agent"

_SQLITE = [
    f"CREATE TRIGGER tasks_queue_insert AFTER INSERT ON tasks WHEN NEW.state = 'queued' "
    f"BEGIN {_ENTER}; END",
    f"CREATE TRIGGER tasks_queue_leave AFTER UPDATE OF state, agent ON tasks "
    f"WHEN OLD.state = 'queued' AND (NEW.state != 'queued' OR NEW.agent != OLD.agent) "
    f"BEGIN {_LEAVE}; END",
    f"CREATE TRIGGER tasks_queue_enter AFTER UPDATE OF state, agent ON tasks "
    f"WHEN NEW.state = 'queued' AND (OLD.state != 'queued' OR NEW.agent != OLD.agent) "
    f"BEGIN {_ENTER}; END",
    f"CREATE TRIGGER tasks_queue_delete AFTER DELETE ON tasks WHEN OLD.state = 'queued' "
    f"BEGIN {_LEAVE}; END",
]

_POSTGRESQL = [
    f"""CREATE FUNCTION claude_hooks_queue_lengths() RETURNS trigger AS $$
BEGIN
  IF TG_OP <> 'INSERT' AND OLD.state = 'queued'
     AND (TG_OP = 'DELETE' OR NEW.state <> 'queued' OR NEW.agent <> OLD.agent) THEN
    {_LEAVE};
  END IF;
  IF TG_OP <> 'DELETE' AND NEW.state = 'queued'
     AND (TG_OP = 'INSERT' OR OLD.state <> 'queued' OR NEW.agent <> OLD.agent) THEN
    {_ENTER};
  END IF;
  RETURN NULL;
END
$$ LANGUAGE plpgsql""",
    "CREATE TRIGGER tasks_queue_lengths AFTER INSERT OR UPDATE OF state, agent OR DELETE "
    "ON tasks FOR EACH ROW EXECUTE FUNCTION claude_hooks_queue_lengths()",
]


def upgrade() -> None:
    op.create_table(
        "queue_lengths",
        sa.Column("agent", sa.String(63), primary_key=True),
        sa.Column("queued", sa.Integer, nullable=False),
    )
    op.execute(
        "INSERT INTO queue_lengths (agent, queued) "
        "SELECT agent, count(*) FROM tasks WHERE state = 'queued' GROUP BY agent"
    )
    postgresql = op.get_bind().dialect.name == "postgresql"
    for statement in _POSTGRESQL if postgresql else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER tasks_queue_lengths ON tasks")
        op.execute("DROP FUNCTION claude_hooks_queue_lengths()")
    else:
        for name in ("insert", "leave", "enter", "delete"):
            op.execute(f"DROP TRIGGER tasks_queue_{name}")
    op.drop_table("queue_lengths")
