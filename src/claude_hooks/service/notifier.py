"""Comments on the forge about each task: queued (where, at what position), started, finished.

The notifier decides each comment from the event bus and writes it to the outbox table at
once; `outbox.Drainer` posts it. So a slow or failing forge never holds up a webhook answer
or a worker, and a comment decided before a crash or a restart is still posted after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from claude_hooks.agents.runners.base import RunProgress
from claude_hooks.config import Config
from claude_hooks.core.decision import ForgeComment
from claude_hooks.core.domain import Task, TaskState
from claude_hooks.forge.gateway import Forge
from claude_hooks.service.events import Event, EventBus
from claude_hooks.service.living import Picture, blocked_hosts, render
from claude_hooks.service.loop import Loop
from claude_hooks.store.outbox import OutboxStore

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # after a pass failed (each write logs its own faults)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def task_comment(event: Event) -> str | None:
    task = event.task
    if task is None:
        return None
    what = f"`{task.kind.value}` (task `{task.id}`)"
    if event.kind == "task.queued":
        position = event.data.get("position", 1)
        where = "starts now" if not event.data.get("busy") else f"is #{position} in its queue"
        return f"claude-hooks: queued {what} for **{task.type}** on `{task.agent}`, which {where}."
    if event.kind == "task.started":
        attempt = f", attempt {task.attempts}" if task.attempts > 1 else ""
        return f"claude-hooks: `{task.agent}` started {what}{attempt}."
    if event.kind == "task.finished":
        return _finished(task, what) + blocked_hosts(event.data.get("egress_blocked") or ())
    if event.kind == "task.moved":
        return (
            f"claude-hooks: moved {what} from the queue of `{event.data['from']}` to "
            f'`{task.agent}`, which was idle (`rebalance = "steal"`).'
        )
    if event.kind == "task.waiting":
        return f"claude-hooks: {what} waits in the queue of `{task.agent}`: {event.data['reason']}."
    return None


def _finished(task: Task, what: str) -> str:
    if task.state is TaskState.SUCCEEDED:
        cost = f", cost ${task.cost_usd:.2f}" if task.cost_usd is not None else ""
        return (
            f"claude-hooks: `{task.agent}` finished {what} in {_duration(task.duration_s)}{cost}."
        )
    if task.state is TaskState.CANCELLED:
        return f"claude-hooks: {what} on `{task.agent}` was cancelled."
    reason = (task.error or "no reason recorded").strip().splitlines()[0][:300]
    return f"claude-hooks: {what} on `{task.agent}` failed: {reason}"


class Notifier(Loop):
    """Writes the comment each event calls for to the outbox; `written` wakes the drainer."""

    def __init__(
        self,
        config: Config,
        forge: Forge,
        bus: EventBus,
        outbox: OutboxStore,
        clock: Callable[[], float],
        written: Callable[[], None],
    ) -> None:
        super().__init__("forge-notifier", RETRY_SECONDS, first=0.0)
        self.config = config
        self.forge = forge
        self.outbox = outbox
        self.clock = clock
        self.written = written
        self.subscription = bus.subscribe(10_000)
        self._pictures: dict[str, Picture] = {}  # living comments of this node's tasks

    async def stop(self) -> None:
        """Write what is still on the bus, then stop: a clean stop keeps every comment."""
        self.subscription.close()
        await super().stop()
        while not self.subscription.queue.empty():
            await self._keep(self.subscription.queue.get_nowait())

    async def run_once(self) -> float:
        # Every event waiting in one pass: a pass per event cost a turn of the event loop.
        # Taken one by one, so those a stop finds still queued are written by `stop`.
        event: Event | None = await self.subscription.get()
        while event is not None:
            await self._keep(event)
            event = self.subscription.take()
        return 0.0

    async def _keep(self, event: Event) -> None:
        task = event.task
        if (
            self.forge.enabled
            and task is not None
            and task.type in self.config.types
            and self.config.types[task.type].comments == "living"
        ):
            await self._keep_living(event, task)
            return
        comment = self._comment_for(event)
        if comment is None:
            return
        try:
            await self.outbox.put(
                comment.as_type, comment.repo, comment.number, comment.body, self.clock()
            )
        except Exception:
            log.exception(
                "could not keep the comment on %s#%d for posting", comment.repo, comment.number
            )
            return
        self.written()

    async def _keep_living(self, event: Event, task: Task) -> None:
        picture = self._picture(event, task)
        if picture is None:
            return
        number = int(task.payload.get("comment_on", task.number))
        body = render(picture, self.config.server.public_url)
        try:
            await self.outbox.put_living(
                task.id,
                task.type,
                task.repo,
                number,
                body,
                self.clock(),
                self.config.server.comment_edit_interval,
            )
        except Exception:
            log.exception("could not keep the status comment of task %s for posting", task.id)
            return
        self.written()

    def _picture(self, event: Event, task: Task) -> Picture | None:
        """The task's picture with this event in it; None for events the comment ignores."""
        known = self._pictures.get(task.id)
        picture = known if known is not None else Picture(task)
        picture.task = task
        if event.kind == "task.queued":
            picture.position = int(event.data.get("position", 1)) if event.data.get("busy") else 0
        elif event.kind == "task.started":
            picture.node, picture.note = self.config.server.node, None
        elif event.kind == "task.progress":
            progress = event.data.get("progress")
            if isinstance(progress, RunProgress):
                picture.progress = progress
        elif event.kind == "task.report":
            picture.calls = list(event.data.get("calls", []))
        elif event.kind == "task.moved":
            picture.note = f"Moved from the queue of `{event.data['from']}`, which was busy."
        elif event.kind == "task.waiting":
            picture.note = f"Waits: {event.data['reason']}."
        elif event.kind == "task.finished":
            picture.egress_blocked = list(event.data.get("egress_blocked") or ())
        else:
            return None
        if task.state.finished:
            self._pictures.pop(task.id, None)
        else:
            self._pictures[task.id] = picture
        return picture

    def _comment_for(self, event: Event) -> ForgeComment | None:
        if not self.forge.enabled:
            return None
        task = event.task
        if task is None or task.type not in self.config.types:
            return None
        if self.config.types[task.type].comments == "off":
            return None
        body = task_comment(event)
        if body is None:
            return None
        number = task.payload.get("comment_on", task.number)
        return ForgeComment(task.type, task.repo, int(number), body)
