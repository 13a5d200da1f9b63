"""Outcome records over SQLite and PostgreSQL: each write's rule, and the report's query."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from claude_hooks.core.decision import Decision, Trip
from claude_hooks.core.outcome_report import PullCounts, RoundCount, SessionCounts
from claude_hooks.core.outcomes import Intervention, OutcomeFact, PullFact, SessionSeen
from claude_hooks.store.decisions import Cause
from claude_hooks.store.sql import SqlStore

NOW = 1_800_000_000.0
KEY = "dev:acme/widget:17"


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    opened = await SqlStore.open(database_url)
    yield opened
    await opened.close()


async def apply(store: SqlStore, *facts: OutcomeFact, trips: list[Trip] | None = None) -> None:
    decision = Decision(outcomes=list(facts), trips=trips or [])
    dispatched = await store.dispatch_all([], None, decision, Cause("a test", None, NOW))
    assert dispatched.recorded


def seen(
    key: str = KEY, at: float = NOW, assigned: bool = True, variant: str | None = "terse"
) -> SessionSeen:
    agent_type, repo, number = key.split(":")
    return SessionSeen(key, agent_type, repo, int(number), at, assigned, variant, "sonnet")


def pull(event: str, at: float, **more: object) -> PullFact:
    return PullFact(event, "acme/widget", 18, at, **more)  # type: ignore[arg-type]


async def test_each_outcome_write_keeps_its_rule(store: SqlStore) -> None:
    # A later sighting never changes the variant the session was first given.
    await apply(store, seen(assigned=False, variant="terse"))
    await apply(store, seen(at=NOW + 10, variant="verbose"))
    assert await store.outcomes.variant_of(KEY) == ("terse",)
    assert await store.outcomes.variant_of("dev:acme/widget:99") is None
    opened = pull("opened", NOW + 100, session_key=KEY, author_type="dev", head_sha="a1")
    await apply(
        store,
        opened,
        pull("opened", NOW + 150, session_key=KEY, author_type="dev", head_sha="b2"),  # once
        pull("ci", NOW + 160, head_sha="b2", passed=False),  # not the first head: not counted
        pull("ci", NOW + 170, head_sha="a1", passed=True),
        pull("ci", NOW + 180, head_sha="a1", passed=False),  # a failure on it stands
        pull("ci", NOW + 190, head_sha="a1", passed=True),  # a pass after it does not undo it
        pull("changes_requested", NOW + 200),
        pull("changes_requested", NOW + 250),
        pull("approved", NOW + 300),
        pull("changes_requested", NOW + 350),  # after approval: not a round until approval
        pull("approved", NOW + 360),  # the first approval's time stays
        pull("merged", NOW + 400),
        pull("closed", NOW + 410),  # closing a merged PR is not "closed unmerged"
        Intervention("commands", "acme/widget", 17, KEY),
        Intervention("human_commits", "acme/widget", 17, KEY, 3),
    )
    # An escalation counts once, when its trip is new.
    trip = Trip("acme/widget", 17, "too many rounds", NOW + 500)
    await apply(store, trips=[trip])
    await apply(store, trips=[trip])

    # Retention prunes bodies and logs, and drops refused requests and comment state: never
    # the outcome records.
    later = NOW + 10 * 365 * 86400
    await store.retention.prune_deliveries(later, later)
    await store.retention.drop_rejections(later)
    await store.retention.drop_comment_state(later)
    rows = await store.outcomes.report(None, "variant")
    assert list(rows.pulls) == [
        PullCounts(
            "terse", 1, 1, 0, 1, 2, 1, 0,
            to_pr_seconds=90.0, to_pr_n=1,
            to_approval_seconds=290.0, to_approval_n=1,
            to_merge_seconds=390.0, to_merge_n=1,
        )
    ]  # fmt: skip
    assert list(rows.sessions) == [SessionCounts("terse", 1, 1, 0, 1, 3)]
    assert list(rows.rounds) == [RoundCount("terse", 2, 1)]
    assert list(rows.tasks) == []
    # Sessions begun before `since` are left out; by week, the week's start names the group.
    assert (await store.outcomes.report(NOW + 1, "type")).pulls == []
    weekly = await store.outcomes.report(None, "week")
    week = str(int(NOW // (7 * 86400) * 7 * 86400))
    assert [p.group for p in weekly.pulls] == [week]
    assert [s.group for s in weekly.sessions] == [week]
