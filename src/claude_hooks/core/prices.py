"""What a Messages API answer costs, from the usage it reports: the egress proxy's meter holds a
task to its `max_budget_usd` with it, mid-stream (the CLI's own check comes between turns).

Anthropic's list prices in USD per million tokens (input, output); writing the prompt cache
costs 1.25 times the input price, reading it 0.1 times. A model is known by the longest prefix
of its id here, else by its family (`opus`, `sonnet`, `haiku` in its id: a newer model of a
family, priced as that family's newest here); a model of no known family is priced as the
dearest, so a budget errs towards stopping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_PER_MILLION: dict[str, tuple[float, float]] = {
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
}
_FAMILIES = {"opus": (5.0, 25.0), "sonnet": (3.0, 15.0), "haiku": (1.0, 5.0)}
_DEAREST = max(_PER_MILLION.values())
CACHE_WRITE = 1.25
CACHE_READ = 0.1


def _prices(model: str | None) -> tuple[float, float]:
    name = (model or "").lower()
    known = [prefix for prefix in _PER_MILLION if name.startswith(prefix)]
    if known:
        return _PER_MILLION[max(known, key=len)]
    family = next((f for f in _FAMILIES if f in name), None)
    return _FAMILIES[family] if family else _DEAREST


def _tokens(usage: Mapping[str, Any], name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) and value > 0 else 0


def cost_usd(model: str | None, usage: Mapping[str, Any]) -> float:
    """The cost of one answer's `usage` (the Messages API's fields) for `model`."""
    given, made = _prices(model)
    input_side = (
        _tokens(usage, "input_tokens")
        + CACHE_WRITE * _tokens(usage, "cache_creation_input_tokens")
        + CACHE_READ * _tokens(usage, "cache_read_input_tokens")
    )
    return (input_side * given + _tokens(usage, "output_tokens") * made) / 1_000_000
