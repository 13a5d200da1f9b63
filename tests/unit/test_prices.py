"""What an answer costs, for the proxy's hold on `max_budget_usd`: a model by its id's longest
known prefix, else by its family, else at the dearest price; cache writes and reads at their
multiples of the input price."""

from __future__ import annotations

import pytest

from claude_hooks.core.prices import cost_usd

MILLION = {"input_tokens": 1_000_000}


@pytest.mark.parametrize(
    ("model", "dollars"),
    [
        ("claude-sonnet-4-5-20250929", 3.0),
        ("claude-opus-4-1-20250805", 15.0),
        ("claude-opus-4-5-20251101", 5.0),
        ("claude-haiku-4-5", 1.0),
        ("claude-sonnet-5-5", 3.0),  # a newer model of a known family
        ("claude-opus-9", 5.0),
        ("someone-elses-model", 15.0),  # no known family: the dearest
        (None, 15.0),
    ],
)
def test_a_million_input_tokens(model: str | None, dollars: float) -> None:
    assert cost_usd(model, MILLION) == pytest.approx(dollars)


def test_output_and_the_cache_at_their_prices() -> None:
    usage = {
        "input_tokens": 1000,
        "output_tokens": 2000,
        "cache_creation_input_tokens": 4000,
        "cache_read_input_tokens": 10000,
        "service_tier": "standard",  # not a count: ignored
    }
    # Sonnet: (1000 + 1.25 * 4000 + 0.1 * 10000) * $3/M + 2000 * $15/M
    assert cost_usd("claude-sonnet-4-5", usage) == pytest.approx(0.021 + 0.03)
    assert cost_usd("claude-sonnet-4-5", {"input_tokens": -5, "output_tokens": "9"}) == 0
