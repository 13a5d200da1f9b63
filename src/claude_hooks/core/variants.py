"""Prompt and model experiments: which variant a session runs, chosen once from its key.

`[types.<t>] variants` splits a type's sessions by share; the choice is a pure function of
the type's `variant_seed` and the session key, so a session keeps its variant from its
assignment to its merge (and a test can seed the split). The first choice is also recorded
with the session's outcome record (`outcome_sessions.variant`), and a run takes the recorded
one: changing the shares later moves new sessions only. Shares sum to at most 1; the rest of
the sessions run the type's own role and model (variant `base` in the report).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def point(seed: str, key: str) -> float:
    """A uniform number in [0, 1) fixed by `seed` and `key`."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose(shares: Sequence[tuple[str, float]], seed: str, key: str) -> str | None:
    """The variant whose slice of [0, 1) the session's point falls in; None past the last
    slice (the type's own settings)."""
    at, edge = point(seed, key), 0.0
    for name, share in shares:
        edge += share
        if at < edge:
            return name
    return None
