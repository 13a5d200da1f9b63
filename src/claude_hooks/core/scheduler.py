"""The pool's choice of instance: a pure function of a snapshot, so it can be tested exhaustively.

Rule (docs/design.md §2): candidates are sorted by name; the instance already holding the request's
session key wins; otherwise the first idle candidate at or after the cursor, cyclically;
otherwise the first candidate with the shortest queue at or after the cursor. Afterwards the
cursor is the chosen index + 1 (unchanged when the session key decided).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    running: bool
    queued: int

    @property
    def idle(self) -> bool:
        return not self.running and self.queued == 0


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    cursor: int


def choose(candidates: Sequence[Candidate], cursor: int, holder: str | None = None) -> Choice:
    """Pick the index of the candidate that takes the next task, and the cursor after it.

    `candidates` must be non-empty and sorted by name; `holder` names the candidate on which the
    request's session key is already running or queued, if any.
    """
    count = len(candidates)
    if count == 0:
        raise ValueError("choose() needs at least one candidate")
    if holder is not None:
        for index, candidate in enumerate(candidates):
            if candidate.name == holder:
                return Choice(index, cursor)
    start = cursor % count
    best = -1
    best_queued = 0
    for step in range(count):
        index = (start + step) % count
        candidate = candidates[index]
        if candidate.idle:
            best = index
            break
        if best < 0 or candidate.queued < best_queued:
            best, best_queued = index, candidate.queued
    return Choice(best, best + 1)
