"""In-process events about tasks and deliveries, for comments on the forge and live views.

Publishing never blocks the pool: each subscriber has a bounded queue, and a subscriber that
falls behind loses events (and is told so) rather than slowing the workers down.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from claude_hooks.core.domain import Task

# Heard through the database: a task was queued, moved or ended on some node (maybe another
# one), so live views look again; it names no task, and nothing is posted for it.
TASK_CHANGED = "task.changed"


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # task.queued | task.started | task.finished | task.moved | task.changed | delivery
    task: Task | None = None
    data: dict[str, Any] = field(default_factory=dict)


class Subscription:
    def __init__(self, bus: EventBus, size: int) -> None:
        self.bus = bus
        self.queue: asyncio.Queue[Event] = asyncio.Queue(size)
        self.dropped = 0

    async def get(self) -> Event:
        return await self.queue.get()

    def take(self) -> Event | None:
        """The next event if one waits (None: none does), without waiting."""
        return None if self.queue.empty() else self.queue.get_nowait()

    def close(self) -> None:
        self.bus.subscribers.discard(self)


class EventBus:
    def __init__(self) -> None:
        self.subscribers: set[Subscription] = set()

    def subscribe(self, size: int = 1000) -> Subscription:
        subscription = Subscription(self, size)
        self.subscribers.add(subscription)
        return subscription

    def publish(self, event: Event) -> None:
        for subscription in self.subscribers:
            try:
                subscription.queue.put_nowait(event)
            except asyncio.QueueFull:
                subscription.dropped += 1
