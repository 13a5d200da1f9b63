"""JSON API: agents, tasks, cancel."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from claude_hooks.core.domain import DispatchRequest, TaskKind, TaskState
from claude_hooks.errors import InvalidInputError, UnknownAgentError
from claude_hooks.forge.names import FullName
from claude_hooks.service.runtime import Service
from claude_hooks.service.task_lookup import find_task
from claude_hooks.service.views import MAX_OFFSET, history_view, task_view
from claude_hooks.store.base import InstanceView, TaskFilter
from claude_hooks.web.auth import require_token
from claude_hooks.web.spend import pause_json

router = APIRouter(dependencies=[Depends(require_token)])


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(_service)]


def agent_json(service: Service, instance: InstanceView, waits: dict[str, str]) -> dict[str, Any]:
    return {
        "name": instance.name,
        "type": instance.type,
        "enabled": instance.enabled,
        "state": instance.state,
        "current_task": instance.running,
        "queue": list(instance.queue),
        "queued": len(instance.queue),
        "paused": pause_json(service, instance.type),
        "waiting": waits.get(instance.name),
        "node": instance.node,
        "pinned_node": instance.pinned_node,
        "auto": instance.auto,  # added by the elastic rule (`<type>-auto-N`)
    }


async def _agent(service: Service, name: str) -> dict[str, Any]:
    for instance in await service.store.instances():
        if instance.name == name:
            return agent_json(service, instance, await service.pool.waits())
    raise UnknownAgentError(name)


@router.get("/api/agents", summary="Every instance with its state and queue")
async def list_agents(service: ServiceDep) -> list[dict[str, Any]]:
    waits = await service.pool.waits()
    return [agent_json(service, instance, waits) for instance in await service.store.instances()]


@router.get("/api/nodes", summary="The nodes on the database, their state and instances")
async def list_nodes(service: ServiceDep) -> list[dict[str, Any]]:
    return [
        {**dataclasses.asdict(view), "instances": list(view.instances)}
        for view in await service.store.nodes.list_nodes(service.node.now())
    ]


@router.post("/api/agents/{name}/disable", summary="Stop giving work to an instance")
async def disable_agent(name: str, service: ServiceDep) -> dict[str, Any]:
    await service.commands.set_enabled(name, False)
    return await _agent(service, name)


@router.post("/api/agents/{name}/enable", summary="Give work to an instance again")
async def enable_agent(name: str, service: ServiceDep) -> dict[str, Any]:
    await service.commands.set_enabled(name, True)
    return await _agent(service, name)


@router.get("/api/tasks", summary="Tasks, newest first, filtered and paginated")
async def list_tasks(
    service: ServiceDep,
    state: TaskState | None = None,
    type: str | None = None,
    agent: str | None = None,
    repo: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    where = TaskFilter(state=state, type=type, agent=agent, repo=repo)
    tasks = await service.store.list_tasks(where, limit, offset)
    positions = await service.store.queue_positions(t.id for t in tasks)
    return {
        "total": await service.store.count_tasks(where),
        "limit": limit,
        "offset": offset,
        "tasks": [task_view(t, positions.get(t.id)) for t in tasks],
    }


class NewTask(BaseModel):
    """A task queued by hand, as a flow would queue it."""

    model_config = ConfigDict(extra="forbid")

    type: str
    kind: TaskKind
    repo: FullName = Field(description="owner/name")
    number: int = Field(ge=1, le=2**63 - 1)
    payload: dict[str, Any] = Field(default_factory=dict)


@router.post("/api/tasks", status_code=202, summary="Queue a task for a type by hand")
async def create_task(body: NewTask, service: ServiceDep) -> dict[str, Any]:
    if body.type not in service.config.types:
        raise InvalidInputError(f"type {body.type!r} is not configured")
    request = DispatchRequest.for_type(body.type, body.kind, body.repo, body.number, body.payload)
    task_id = await service.pool.dispatch_by_type(body.type, request)
    task = await service.store.get_task(task_id)
    assert task is not None
    return task_view(task, (await service.store.queue_positions([task.id])).get(task.id))


@router.get("/api/tasks/{task_id}", summary="One task, with its retries and who cancelled it")
async def get_task(task_id: str, service: ServiceDep) -> dict[str, Any]:
    task = await find_task(service.store, task_id)
    view = task_view(task, (await service.store.queue_positions([task.id])).get(task.id))
    view.update(await history_view(service.store, task))
    return view


@router.post("/api/tasks/{task_id}/cancel", summary="Cancel a queued or running task")
async def cancel_task(task_id: str, request: Request, service: ServiceDep) -> dict[str, Any]:
    result = await service.commands.cancel(task_id, _who(request))
    return {"id": result.task_id, "agent": result.agent, "was": result.was.value}


@router.post(
    "/api/tasks/{task_id}/retry",
    status_code=202,
    summary="Queue a failed or cancelled task again, as a new task linked to it",
)
async def retry_task(task_id: str, service: ServiceDep) -> dict[str, Any]:
    old = await find_task(service.store, task_id)
    task = await service.commands.retry(old.id)
    view = task_view(task, (await service.store.queue_positions([task.id])).get(task.id))
    view["retry_of"] = old.id
    return view


def _who(request: Request) -> str:
    """The dashboard signs in with a cookie; API clients send the token as a header."""
    if request.headers.get("authorization"):
        return "a user, through the API"
    return "a user, on the dashboard"


@router.post("/cancel", summary="Cancel the task an agent is running now")
async def cancel_agent(
    request: Request, service: ServiceDep, agent: Annotated[str | None, Query()] = None
) -> dict[str, Any]:
    if not agent:
        raise InvalidInputError("query parameter 'agent' is required: POST /cancel?agent=NAME")
    running = await service.commands.cancel_running(
        agent, f"{_who(request)} (POST /cancel?agent={agent})"
    )
    return {"cancelled": running, "agent": agent}
