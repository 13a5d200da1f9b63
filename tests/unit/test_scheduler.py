"""The pure selection: the exact cursor rule and its properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claude_hooks.core.domain import new_task_id
from claude_hooks.core.scheduler import Candidate, Choice, choose


def idle(name: str) -> Candidate:
    return Candidate(name, running=False, queued=0)


def busy(name: str, queued: int = 0) -> Candidate:
    return Candidate(name, running=True, queued=queued)


def test_single_idle_candidate() -> None:
    assert choose([idle("a")], 0) == Choice(0, 1)


def test_round_robin_among_idle_follows_the_cursor() -> None:
    candidates = [idle("a"), idle("b"), idle("c")]
    cursor = 0
    picks = []
    for _ in range(6):
        choice = choose(candidates, cursor)
        picks.append(candidates[choice.index].name)
        cursor = choice.cursor
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_first_idle_at_or_after_cursor_cyclically() -> None:
    candidates = [idle("a"), busy("b"), busy("c")]
    assert choose(candidates, 1) == Choice(0, 1)
    assert choose(candidates, 2) == Choice(0, 1)


def test_cursor_is_chosen_index_plus_one_unreduced() -> None:
    assert choose([idle("a"), idle("b")], 1) == Choice(1, 2)
    # With a third candidate added, cursor 2 now points at it.
    assert choose([idle("a"), idle("b"), idle("c")], 2) == Choice(2, 3)


def test_idle_beats_a_busy_worker_with_an_empty_queue() -> None:
    assert choose([busy("a"), idle("b")], 0).index == 1


def test_all_busy_least_loaded_wins() -> None:
    assert choose([busy("a", 3), busy("b", 1), busy("c", 2)], 0).index == 1


def test_all_busy_ties_broken_by_cursor() -> None:
    candidates = [busy("a", 1), busy("b", 1), busy("c", 1)]
    assert choose(candidates, 0) == Choice(0, 1)
    assert choose(candidates, 1) == Choice(1, 2)
    assert choose(candidates, 5) == Choice(2, 3)


def test_holder_of_the_session_key_wins_and_keeps_the_cursor() -> None:
    candidates = [idle("a"), busy("b", 4)]
    assert choose(candidates, 0, holder="b") == Choice(1, 0)


def test_unknown_holder_is_ignored() -> None:
    assert choose([idle("a")], 0, holder="gone") == Choice(0, 1)


def test_no_candidates_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one candidate"):
        choose([], 0)


candidate_lists = st.lists(
    st.tuples(st.booleans(), st.integers(0, 5)), min_size=1, max_size=12
).map(lambda states: [Candidate(f"w{i:02}", r, q) for i, (r, q) in enumerate(states)])


@given(candidate_lists, st.integers(0, 100))
def test_never_a_busy_worker_while_one_is_idle(candidates: list[Candidate], cursor: int) -> None:
    chosen = candidates[choose(candidates, cursor).index]
    if any(c.idle for c in candidates):
        assert chosen.idle


@given(candidate_lists, st.integers(0, 100))
def test_minimal_queue_when_none_is_idle(candidates: list[Candidate], cursor: int) -> None:
    if any(c.idle for c in candidates):
        return
    chosen = candidates[choose(candidates, cursor).index]
    assert chosen.queued == min(c.queued for c in candidates)


@given(st.integers(1, 12), st.integers(0, 100), st.integers(1, 60))
def test_fair_share_over_idle_dispatches(count: int, cursor: int, dispatches: int) -> None:
    candidates = [idle(f"w{i:02}") for i in range(count)]
    tally = [0] * count
    for _ in range(dispatches):
        choice = choose(candidates, cursor)
        tally[choice.index] += 1
        cursor = choice.cursor
    assert max(tally) - min(tally) <= 1


def test_task_ids_are_unique_and_sorted_even_within_one_millisecond() -> None:
    ids = [new_task_id(1_800_000_000.0) for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 16 for i in ids)
    later = new_task_id(1_800_000_001.0)
    assert later > ids[-1]
