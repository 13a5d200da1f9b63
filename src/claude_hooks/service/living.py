"""The living status comment (`comments = "living"`): one comment per task, written when it
is queued and edited in place as it moves, so an issue's thread shows one current picture of
each task instead of a comment per step.

Per task, not per session: a session lives as long as its issue, and one comment rewritten
for weeks would hide its history; a task's comment tells one run from queued to finished,
and the next task of the session gets its own at the bottom of the thread, where people read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from claude_hooks.agents.runners.base import RunProgress
from claude_hooks.core.domain import Task, TaskState
from claude_hooks.store.egress import EgressBlock

MAX_FILES = 20  # files listed; the rest are counted


@dataclass(slots=True)
class Picture:
    """Everything the comment shows, gathered from the task's events."""

    task: Task
    position: int | None = None  # in its instance's queue, while queued
    node: str | None = None  # where it started
    note: str | None = None  # why it waits, or where it moved from
    calls: list[dict[str, object]] = field(default_factory=list)  # its forge tools' calls
    progress: RunProgress = field(default_factory=RunProgress)
    egress_blocked: list[EgressBlock] = field(default_factory=list)  # at its end


def _when(ts: float | None) -> str:
    if ts is None:
        return "?"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _state_line(picture: Picture) -> str:
    task = picture.task
    if task.state is TaskState.QUEUED:
        where = "starts now" if not picture.position else f"#{picture.position} in its queue"
        return f"**queued** on `{task.agent}` ({where})"
    if task.state is TaskState.HELD:
        return f"**held** on `{task.agent}`: its session is paused (`resume` to go on)"
    if task.state is TaskState.RUNNING:
        node = f" (node `{picture.node}`)" if picture.node else ""
        attempt = f", attempt {task.attempts}" if task.attempts > 1 else ""
        return f"**running** on `{task.agent}`{node} since {_when(task.started_at)}{attempt}"
    took = _duration(task.duration_s)
    cost = f", cost ${task.cost_usd:.2f}" if task.cost_usd is not None else ""
    if task.state is TaskState.SUCCEEDED:
        return f"**succeeded** on `{task.agent}` in {took}{cost}"
    if task.state is TaskState.CANCELLED:
        return (
            f"**cancelled** on `{task.agent}` after {took}"
            if task.started_at
            else (f"**cancelled** before it started on `{task.agent}`")
        )
    reason = (task.error or "no reason recorded").strip().splitlines()[0][:300]
    return f"**failed** on `{task.agent}` after {took}{cost}: {reason}"


def render(picture: Picture, public_url: str = "") -> str:
    """The comment's text for the task as `picture` has it now."""
    task = picture.task
    lines = [
        f"claude-hooks: `{task.kind.value}` for **{task.type}** (task `{task.id}`): "
        + _state_line(picture)
    ]
    if picture.note:
        lines.append(f"\n{picture.note}")
    progress = picture.progress
    if progress.todos:
        lines.append("")
        for status, content in progress.todos:
            mark = "x" if status == "completed" else " "
            doing = " *(in progress)*" if status == "in_progress" else ""
            lines.append(f"- [{mark}] {content}{doing}")
    if progress.files:
        shown = ", ".join(f"`{name}`" for name in progress.files[:MAX_FILES])
        more = len(progress.files) - MAX_FILES
        lines.append(f"\nFiles touched: {shown}" + (f" and {more} more" if more > 0 else ""))
    opened = [
        c["done"] for c in picture.calls if c.get("tool") == "open_pull_request" and "done" in c
    ]
    lines += [f"\nPull request: {text}" for text in opened]
    blocked = [c for c in picture.calls if "refused" in c or "failed" in c]
    if blocked:
        lines.append("\nNot done:")
        for call in blocked:
            lines.append(f"- `{call['tool']}`: {call.get('refused') or call.get('failed')}")
    if task.state is TaskState.RUNNING and progress.cost_usd is not None:
        lines.append(f"\nCost so far: ${progress.cost_usd:.2f}")
    if task.state.finished and task.state is TaskState.SUCCEEDED and task.result:
        lines.append("\n" + task.result.strip()[:1000])
    if picture.egress_blocked:
        lines.append(blocked_hosts(picture.egress_blocked).removeprefix("\n"))
    if public_url:
        label = "Live log" if not task.state.finished else "Log"
        lines.append(f"\n[{label}]({public_url.rstrip('/')}/tasks/{task.id})")
    return "\n".join(lines)


def blocked_hosts(blocked: Iterable[EgressBlock]) -> str:
    """The hosts the agent was refused, as a firewall reports them on the PR."""
    named = [f"{b.host}:{b.port} ×{b.count}" for b in blocked]  # noqa: RUF001
    return f"\n\nEgress blocked: {', '.join(named)}" if named else ""
