"""Steering on the service's side: each running task's inbox of mentions, woken when one is
written for it (by this node's intake, or by any node's through a `steer` wake-up), and the
follow-up tasks made of the messages a run ended without taking."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from claude_hooks.agents.runners.base import SteerMessage
from claude_hooks.core.domain import DispatchRequest, Task, TaskKind
from claude_hooks.store.steering import SteerStore

log = logging.getLogger(__name__)


class Inbox:
    """`SteerInbox` of one run: the store holds the messages, the event says look."""

    def __init__(self, store: SteerStore, task_id: str, clock: Callable[[], float]) -> None:
        self.store = store
        self.task_id = task_id
        self.clock = clock
        self._arrived = asyncio.Event()
        self._arrived.set()  # messages written between the claim and the start

    def arrived(self) -> None:
        self._arrived.set()

    async def wait(self) -> None:
        await self._arrived.wait()

    async def take(self) -> list[SteerMessage]:
        self._arrived.clear()
        taken = await self.store.take(self.task_id, self.clock())
        if taken:
            log.info("task %s: %d steering message(s) delivered", self.task_id, len(taken))
        return [SteerMessage(s.sender, s.body, s.at, s.comment_id) for s in taken]


def follow_ups(task: Task, payloads: list[dict[str, object]]) -> list[DispatchRequest]:
    """The follow-up tasks of the steering messages a run did not take: mentions answered
    after it, in the same session, as if they had been queued."""
    return [
        DispatchRequest(
            kind=TaskKind.ANSWER_MENTION,
            repo=task.repo,
            number=task.number,
            session_key=task.session_key,
            payload=dict(payload),
        )
        for payload in payloads
    ]
