"""Recording refused deliveries, so the most common setup mistake (a wrong secret) shows in
`deliveries list` and on the dashboard, not only in the log.

Only what the request said about itself is kept — the headers that identify it, its size and
where it came from — never its body. At most `server.max_rejections_per_hour` are recorded per
clock hour, so a flood of bad requests cannot fill the disk; the rest are only counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from claude_hooks.store.rejections import Rejection, RejectionStore

log = logging.getLogger(__name__)

_EVENT_HEADERS = ("x-forgejo-event-type", "x-gitea-event-type", "x-forgejo-event", "x-gitea-event")
_DELIVERY_HEADERS = ("x-forgejo-delivery", "x-gitea-delivery", "x-github-delivery")


def _first(headers: Mapping[str, str], names: tuple[str, ...], limit: int) -> str | None:
    for name in names:
        value = headers.get(name)
        if value:
            return value[:limit]
    return None


def hint(status: int, reason: str) -> str:
    """What to check, for the dashboard and the CLI."""
    if status == 401 and "does not match" in reason:
        return (
            "signature does not match: check that the webhook's secret equals server.webhook_secret"
        )
    if status == 401 and "webhook_secret is not set" in reason:
        return "set server.webhook_secret to the webhook's secret and restart"
    if status == 401:
        return "set a secret on the Forgejo webhook, the same as server.webhook_secret"
    if status == 408:
        return "the body arrived too slowly: check the network between the forge and the service"
    if status == 413:
        return "the body is larger than server.max_body_bytes: raise it if the sender is yours"
    return "the request is not a well-formed Forgejo delivery: check the webhook's content type"


class RejectionLog:
    """Writes rejections to the store, at most `per_hour` each clock hour."""

    def __init__(self, store: RejectionStore, per_hour: int, clock: Callable[[], float]) -> None:
        self.store = store
        self.per_hour = per_hour
        self.clock = clock
        self.dropped = 0
        self._hour: int | None = None
        self._recorded = 0

    async def record(
        self,
        status: int,
        reason: str,
        headers: Mapping[str, str],
        size: int,
        remote: str | None,
    ) -> bool:
        """Keep one rejection; False when this hour's allowance is used up."""
        now = self.clock()
        hour = int(now // 3600)
        if hour != self._hour:
            # Counted from the database, so a restart does not grant a fresh allowance.
            self._hour = hour
            self._recorded = await self.store.count_rejections(since=hour * 3600.0)
        if self._recorded >= self.per_hour:
            self.dropped += 1
            return False
        self._recorded += 1
        await self.store.add_rejection(
            Rejection(
                received_at=now,
                status=status,
                reason=reason[:1000],
                size=size,
                remote=remote[:100] if remote else None,
                event=_first(headers, _EVENT_HEADERS, 64),
                delivery_id=_first(headers, _DELIVERY_HEADERS, 100),
                user_agent=_first(headers, ("user-agent",), 200),
                content_type=_first(headers, ("content-type",), 200),
                content_length=_first(headers, ("content-length",), 32),
            )
        )
        return True
