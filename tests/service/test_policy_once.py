"""A delivery reads each repository's policy once: its flows and the intake's checks share it."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_hooks.core.policy import Policy, PolicyError, effective
from claude_hooks.service import flows
from tests.support import make_config


async def test_each_repository_and_branch_is_looked_up_once(tmp_path: Path) -> None:
    policy = effective(make_config(tmp_path), [])
    asked: list[tuple[str, str | None]] = []

    async def lookup(repo: str, base: str | None) -> Policy:
        asked.append((repo, base))
        if repo == "acme/broken":
            raise PolicyError(["line 3: max_running: not a number"])
        return policy

    once = flows.once_each(lookup)
    assert await once("acme/widget", None) is policy
    assert await once("acme/widget", None) is policy
    assert await once("acme/widget", "release") is policy
    for _ in range(2):
        with pytest.raises(PolicyError, match="max_running"):
            await once("acme/broken", None)
    assert asked == [("acme/widget", None), ("acme/widget", "release"), ("acme/broken", None)]
