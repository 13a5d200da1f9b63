"""The nodes the team's work needs: the query KEDA's `postgresql` scaler polls.

One place for it: `claude-hooks scaler-query` prints it, the README explains it, and
deploy/kubernetes/keda.yaml holds a copy that a test keeps equal to it and runs on PostgreSQL.

A type's work can keep busy at most one instance per session (a session never runs on two at
once) and at most the type's instances: `least(instances, sessions)` per type, summed. Counted
are the sessions with a queued or running task (a paused session's `held` tasks wait for no
one) and the enabled instances no node is pinned to (a pinned instance runs on its own node,
not on one the scaler adds). A node holds at most `capacity` instances, the largest capacity
of the live nodes (the pods of one Deployment share one); 0, no limit, or no live node: one
node holds them all. The answer is an integer, as the scaler wants.
"""

from __future__ import annotations

NODES_NEEDED = """\
WITH instances AS (
  SELECT type, count(*) AS n
  FROM agents
  WHERE enabled AND pinned_node IS NULL
  GROUP BY type
), sessions AS (
  SELECT type, count(DISTINCT session_key) AS n
  FROM tasks
  WHERE state IN ('queued', 'running')
  GROUP BY type
), busy AS (
  SELECT coalesce(sum(least(instances.n, sessions.n)), 0) AS n
  FROM instances JOIN sessions USING (type)
), per_node AS (
  SELECT coalesce(max(capacity), 0) AS capacity
  FROM nodes
  WHERE stopped_at IS NULL AND dead_at IS NULL
    AND heartbeat_at + lease_seconds >= extract(epoch FROM now())
)
SELECT CAST(CASE
  WHEN per_node.capacity = 0 THEN least(busy.n, 1)
  ELSE ceil(busy.n / per_node.capacity)
END AS integer) AS nodes
FROM busy, per_node
"""
