"""A pod's deletion cost (`core.deletion_cost`): its node's work, as Kubernetes reads it."""

from __future__ import annotations

from claude_hooks.core.deletion_cost import INT32_MAX, deletion_cost


def test_the_cost_is_the_work_within_an_int32() -> None:
    assert deletion_cost(0, 0) == 0  # an idle pod goes first
    assert deletion_cost(2, 3) == 5
    assert deletion_cost(1, 2**40) == INT32_MAX
