"""The broken policy files each repository was told of, so a file is complained about once.

A delivery that meets a broken file records it here in its own transaction; only the one whose
row is new posts the comment, so deliveries racing on several nodes ask the humans once per
version of the file (its blob sha: fixing it and breaking it again is a new version).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from claude_hooks.store.schema import policy_faults


def write_policy_fault(conn: sa.Connection, repo: str, file_sha: str, now: float) -> bool:
    """Record that `repo` was told of the file `file_sha`; False if it was before."""
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (
        module.insert(policy_faults)
        .values(repo=repo, file_sha=file_sha, noticed_at=now)
        .on_conflict_do_nothing()
        .returning(policy_faults.c.repo)
    )
    return conn.execute(statement).first() is not None
