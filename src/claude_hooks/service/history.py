"""Deliveries as the API, the CLI and the dashboard list them: recorded deliveries by outcome,
or — for `rejected` — the requests refused before they became deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from claude_hooks.core.domain import DELIVERY_OUTCOMES, REJECTED, SPOOLED
from claude_hooks.errors import InvalidInputError
from claude_hooks.service.views import delivery_view, rejection_view
from claude_hooks.store.base import Store
from claude_hooks.store.intake import DeliveryRecord


def check_outcome(outcome: str | None) -> str | None:
    if outcome and outcome not in DELIVERY_OUTCOMES:
        raise InvalidInputError(
            f"outcome must be one of {', '.join(DELIVERY_OUTCOMES)}, not {outcome!r}"
        )
    return outcome or None


def spooled_rows(
    spooled: Sequence[DeliveryRecord], limit: int, offset: int
) -> tuple[int, list[dict[str, Any]]]:
    """Deliveries waiting in a spool, newest first, as the database's are listed."""
    newest = list(reversed(spooled))[offset : offset + limit]
    return len(spooled), [delivery_view(record) for record in newest]


async def delivery_rows(
    store: Store,
    outcome: str | None,
    limit: int,
    offset: int,
    spooled: Sequence[DeliveryRecord] = (),
) -> tuple[int, list[dict[str, Any]]]:
    """The total that match, and one page of them, newest first; `spooled`: what waits in
    this node's spool."""
    outcome = check_outcome(outcome)
    if outcome == SPOOLED:
        return spooled_rows(spooled, limit, offset)
    if outcome == REJECTED:
        found = await store.rejections.list_rejections(limit, offset)
        total = await store.rejections.count_rejections()
        return total, [rejection_view(r) for r in found]
    records = await store.intake.list_deliveries(limit, offset, outcome)
    total = await store.intake.count_deliveries(outcome)
    return total, [delivery_view(r) for r in records]
