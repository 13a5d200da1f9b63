"""Table definitions for the SQL store; a test checks that the migrations build exactly these."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("type", sa.String(63), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("node", sa.String(63)),  # the live node that holds it now, if any
    sa.Column("pinned_node", sa.String(63)),  # only this node may hold it
    # Added by the elastic rule (`<type>-auto-N`): retired when idle; declared ones never are.
    sa.Column("auto", sa.Boolean, nullable=False, server_default=sa.false()),
)

tasks = sa.Table(
    "tasks",
    metadata,
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
    sa.Column("node", sa.String(63)),  # the node that runs it (set when claimed)
    sa.Index("ix_tasks_agent_state_seq", "agent", "state", "seq"),
    sa.Index("ix_tasks_state_seq", "state", "seq"),
    sa.Index("ix_tasks_seq", "seq"),
    sa.Index("ix_tasks_delivery", "delivery_id"),
    sa.Index("ix_tasks_session_state", "session_key", "state", "kind", "seq"),
    sa.Index("ix_tasks_finished", "finished_at"),
    sa.Index("ix_tasks_issue", "repo", "number"),
    # One conversation never runs twice at once: the database holds the invariant.
    sa.Index(
        "ux_tasks_running_session",
        "session_key",
        unique=True,
        sqlite_where=sa.text("state = 'running'"),
        postgresql_where=sa.text("state = 'running'"),
    ),
)

cursors = sa.Table(
    "cursors",
    metadata,
    sa.Column("type", sa.String(63), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("claude_session_id", sa.String(100), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("total_cost_usd", sa.Float),
)

signals = sa.Table(
    "signals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("target", sa.String(300), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sqlite_autoincrement=True,
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("flavor", sa.String(16), nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64)),
    sa.Column("repo", sa.String(200)),
    sa.Column("number", sa.Integer),
    sa.Column("sender", sa.String(100)),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("task_ids", sa.JSON, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("replay_of", sa.String(100)),
    sa.Column("pruned_at", sa.Float),
    sa.Index("ix_deliveries_received", "received_at"),
)

assignments = sa.Table(
    "assignments",
    metadata,
    sa.Column("repo", sa.String(200), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("type", sa.String(63), primary_key=True),
)

pull_links = sa.Table(
    "pull_links",
    metadata,
    sa.Column("repo", sa.String(200), primary_key=True),
    sa.Column("pr_number", sa.Integer, primary_key=True),
    sa.Column("author_type", sa.String(63), nullable=False),
    sa.Column("issue_number", sa.Integer, nullable=False),
    sa.Column("head_sha", sa.String(64), nullable=False),
    sa.Column("open", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_pull_links_head", "repo", "head_sha"),
)

fix_attempts = sa.Table(
    "fix_attempts",
    metadata,
    sa.Column("repo", sa.String(200), primary_key=True),
    sa.Column("pr_number", sa.Integer, primary_key=True),
    sa.Column("head_sha", sa.String(64), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
)

ci_watches = sa.Table(
    "ci_watches",
    metadata,
    sa.Column("repo", sa.String(200), primary_key=True),
    sa.Column("pr_number", sa.Integer, primary_key=True),
    sa.Column("head_sha", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# A delivery answered `pending`: the forge could not answer in time; retried until it does.
pending_deliveries = sa.Table(
    "pending_deliveries",
    metadata,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Index("ix_pending_deliveries_next", "next_attempt_at"),
)

# Deliveries refused before they were read: what arrived, never its body.
rejections = sa.Table(
    "rejections",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("remote", sa.String(100)),
    sa.Column("event", sa.String(64)),
    sa.Column("delivery_id", sa.String(100)),
    sa.Column("user_agent", sa.String(200)),
    sa.Column("content_type", sa.String(200)),
    sa.Column("content_length", sa.String(32)),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Index("ix_rejections_received", "received_at"),
    sqlite_autoincrement=True,
)

# What a task's own row does not say: who cancelled it, which task it retries, when its log went.
task_notes = sa.Table(
    "task_notes",
    metadata,
    sa.Column("task_id", sa.String(32), primary_key=True),
    sa.Column("retry_of", sa.String(32)),
    sa.Column("cancelled_by", sa.Text),
    sa.Column("cancelled_by_delivery", sa.String(100)),
    sa.Column("log_pruned_at", sa.Float),
    sa.Column("moved_from", sa.String(63)),
    sa.Column("moved_at", sa.Float),
    sa.Column("group_wait", sa.Text),  # why it waits at its queue's head for its group
    sa.Index("ix_task_notes_retry_of", "retry_of"),
    sa.Index("ix_task_notes_delivery", "cancelled_by_delivery"),
)

# What a sandboxed task's egress proxy saw: the refused hosts and the metered API usage.
task_egress = sa.Table(
    "task_egress",
    metadata,
    sa.Column("task_id", sa.String(32), primary_key=True),
    sa.Column("type", sa.String(63), nullable=False),
    sa.Column("blocked_total", sa.Integer, nullable=False),
    sa.Column("blocked", sa.Text, nullable=False),  # JSON: [{host, port, count}]
    sa.Column("metered", sa.Text),  # JSON: the Messages API usage relayed, or null
)

budgets = sa.Table(
    "budgets",
    metadata,
    sa.Column("scope", sa.String(63), primary_key=True),
    sa.Column("period", sa.String(8), primary_key=True),
    sa.Column("usd", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

breakers = sa.Table(
    "breakers",
    metadata,
    sa.Column("type", sa.String(63), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("trips", sa.Integer, nullable=False),
    sa.Column("open_until", sa.Float),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)

issue_guards = sa.Table(
    "issue_guards",
    metadata,
    sa.Column("repo", sa.String(200), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("since", sa.Float, nullable=False),
    sa.Column("review_rounds", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tripped_at", sa.Float),
    sa.Column("reason", sa.Text),
)

# Every `serve` on the database is a node; its lease is `heartbeat_at + lease_seconds`.
nodes = sa.Table(
    "nodes",
    metadata,
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
    # Deliveries in the node's spool, waiting for the database (as of its last heartbeat).
    sa.Column("spooled", sa.Integer, nullable=False, server_default="0"),
)

# One runner of each background duty across the nodes: the holder renews before it expires.
leaders = sa.Table(
    "leaders",
    metadata,
    sa.Column("duty", sa.String(32), primary_key=True),
    sa.Column("node", sa.String(63), nullable=False),
    sa.Column("incarnation", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

# Claude Code transcripts mirrored through the SDK's SessionStore, one row per entry in order;
# `subpath` is "" for the main transcript. A `uuid` is stored once per transcript.
transcript_entries = sa.Table(
    "transcript_entries",
    metadata,
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
    sa.Column("mtime", sa.BigInteger, nullable=False),  # epoch milliseconds, when stored
    sa.Index("ix_transcript_entries_key", "project_key", "session_id", "subpath", "id"),
    sa.Index(
        "ux_transcript_entries_uuid", "project_key", "session_id", "subpath", "uuid", unique=True
    ),
    sqlite_autoincrement=True,
)

# A session's workdir as its last run left it (commits, index, uncommitted and untracked
# files), as a git bundle, so whichever node runs the session next continues from it.
worktree_states = sa.Table(
    "worktree_states",
    metadata,
    sa.Column("session_key", sa.String(300), primary_key=True),
    sa.Column("branch", sa.String(255)),  # None: HEAD was detached
    sa.Column("head", sa.String(64), nullable=False),
    sa.Column("worktree", sa.String(64), nullable=False),
    sa.Column("index_commit", sa.String(64), nullable=False),
    sa.Column("bundle", sa.LargeBinary, nullable=False),
    sa.Column("node", sa.String(63)),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Forge comments decided but not yet posted: the drainer posts them in id order and deletes
# each once posted, so a crash or restart loses none.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("as_type", sa.String(63), nullable=False),
    sa.Column("repo", sa.String(200), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_at", sa.Float, nullable=False),
    sa.Column("last_error", sa.Text),
    # Set for a living comment's letter: the task whose one comment it creates or edits.
    sa.Column("living_key", sa.String(64)),
)

# Living comments (`comments = "living"`): the forge's id of each task's one comment, once
# posted, and when it was last written (edits are throttled per comment).
living_comments = sa.Table(
    "living_comments",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("comment_id", sa.BigInteger, nullable=False),
    sa.Column("written_at", sa.Float, nullable=False),
)

# Each instance's queued tasks, counted by triggers on `tasks` (migration 0011): placing reads
# it instead of counting the queue.
queue_lengths = sa.Table(
    "queue_lengths",
    metadata,
    sa.Column("agent", sa.String(63), primary_key=True),
    sa.Column("queued", sa.Integer, nullable=False),
)

# Sessions a human paused from the forge (`@<login> pause`): their tasks wait as `held`.
paused_sessions = sa.Table(
    "paused_sessions",
    metadata,
    sa.Column("session_key", sa.String(300), primary_key=True),
    sa.Column("paused_by", sa.String(255), nullable=False),
    sa.Column("paused_at", sa.Float, nullable=False),
)

# Mentions sent into a running task (steering): delivered to its agent once taken; those not
# taken when the run ends become follow-up tasks (`followed_up_at`).
steers = sa.Table(
    "steers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.String(32), nullable=False, index=True),
    sa.Column("sender", sa.String(255), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("comment_id", sa.BigInteger),
    sa.Column("payload", sa.JSON, nullable=False),  # the mention's task payload, for a follow-up
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("delivered_at", sa.Float),
    sa.Column("followed_up_at", sa.Float),
)

# The labels last seen on an issue or PR: a label event carries the labels after the change
# only, so what was added or removed is the difference with these.
issue_labels = sa.Table(
    "issue_labels",
    metadata,
    sa.Column("repo", sa.String(200), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
)

# The last polite refusal of a forge command per sender and issue: at most one an hour.
command_refusals = sa.Table(
    "command_refusals",
    metadata,
    sa.Column("repo", sa.String(200), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("sender", sa.String(255), primary_key=True),
    sa.Column("refused_at", sa.Float, nullable=False),
)

# Every change the elastic rule made to a type's instances: which node's leader, what it added
# or retired, why, the wait (or idle time) that caused it, and how many queued tasks it moved.
instance_changes = sa.Table(
    "instance_changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("type", sa.String(63), nullable=False),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("node", sa.String(63)),
    sa.Column("act", sa.String(16), nullable=False),
    sa.Column("names", sa.Text, nullable=False),  # the instances, comma-separated
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("wait_seconds", sa.Float, nullable=False),
    sa.Column("moved", sa.Integer, nullable=False, server_default="0"),
    sqlite_autoincrement=True,
)

# Outcome records (`core/outcomes.py`): one row per session the agents worked, with its prompt
# variant and model (chosen once, kept for its life) and the humans' interventions. Retention
# never prunes these.
outcome_sessions = sa.Table(
    "outcome_sessions",
    metadata,
    sa.Column("session_key", sa.String(300), primary_key=True),
    sa.Column("type", sa.String(63), nullable=False),
    sa.Column("repo", sa.String(200), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("variant", sa.String(63)),
    sa.Column("model", sa.String(100)),
    sa.Column("first_at", sa.Float, nullable=False),
    sa.Column("assigned_at", sa.Float),  # its first work_issue: an assignment or a label
    sa.Column("commands", sa.Integer, nullable=False, server_default="0"),
    sa.Column("stops", sa.Integer, nullable=False, server_default="0"),
    sa.Column("escalations", sa.Integer, nullable=False, server_default="0"),
    sa.Column("human_commits", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_outcome_sessions_first", "first_at"),
    sa.Index("ix_outcome_sessions_issue", "repo", "number"),
)

# One row per agent pull request: when it was opened, approved, merged or closed, the
# changes-requested rounds before its first approval, and how CI did on its first head.
outcome_pulls = sa.Table(
    "outcome_pulls",
    metadata,
    sa.Column("repo", sa.String(200), primary_key=True),
    sa.Column("pr_number", sa.Integer, primary_key=True),
    sa.Column("session_key", sa.String(300), nullable=False),  # its author's session
    sa.Column("type", sa.String(63), nullable=False),  # its author type
    sa.Column("opened_at", sa.Float, nullable=False),
    sa.Column("first_head", sa.String(64), nullable=False),
    sa.Column("first_ci", sa.Boolean),  # None: no verdict on the first head yet
    sa.Column("review_rounds", sa.Integer, nullable=False, server_default="0"),
    sa.Column("approved_at", sa.Float),
    sa.Column("merged_at", sa.Float),
    sa.Column("closed_at", sa.Float),  # closed unmerged
    sa.Index("ix_outcome_pulls_session", "session_key"),
)

# The weekly outcome summaries posted ([report]): one row per week, so of several nodes (or a
# restart) the summary goes out once.
outcome_summaries = sa.Table(
    "outcome_summaries",
    metadata,
    sa.Column("week", sa.String(16), primary_key=True),
    sa.Column("posted_at", sa.Float, nullable=False),
)

# The broken policy files each repository was told of: one comment per version of a file.
policy_faults = sa.Table(
    "policy_faults",
    metadata,
    sa.Column("repo", sa.String(200), primary_key=True),
    sa.Column("file_sha", sa.String(64), primary_key=True),
    sa.Column("noticed_at", sa.Float, nullable=False),
)

# Every run of a task (`runs`): opened by the claim that starts it, closed by what ends it.
task_runs = sa.Table(
    "task_runs",
    metadata,
    sa.Column("task_id", sa.String(32), primary_key=True),
    sa.Column("run", sa.Integer, primary_key=True),
    sa.Column("node", sa.String(63)),
    sa.Column("agent", sa.String(63), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("outcome", sa.String(16)),  # None while it runs
    sa.Column("error", sa.Text),  # its error, or why it went back to its queue
    sa.Column("log_offset", sa.BigInteger, nullable=False),
)
