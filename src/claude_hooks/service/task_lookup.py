"""A task named the way people see it: its full id, or any tail of it that only it has.

The dashboard shows the last 7 characters of an id (its first ones are the creation time,
shared by tasks made close together), so that is what people copy. A tail that several
tasks end with is refused with the matches listed, never resolved to one of them."""

from __future__ import annotations

from claude_hooks.core.domain import Task
from claude_hooks.errors import AmbiguousTaskError, UnknownTaskError
from claude_hooks.store.base import Store

LISTED = 5  # matches named in an ambiguity error


async def find_task(store: Store, shown: str) -> Task:
    """The task with id `shown`, else the only one whose id ends with it."""
    task = await store.get_task(shown)
    if task is not None:
        return task
    found = await store.task_ids_ending(shown, LISTED + 1) if shown else []
    if len(found) > 1:
        raise AmbiguousTaskError(shown, found[:LISTED], more=len(found) > LISTED)
    task = await store.get_task(found[0]) if found else None
    if task is None:
        raise UnknownTaskError(shown)
    return task
