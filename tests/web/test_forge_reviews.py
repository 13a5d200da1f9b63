"""Reviews of what changed: a re-requested review carries the head reviewed last and the new
one; a queued review follows the pushes to its PR. Signed deliveries into the service."""

from __future__ import annotations

import json
from pathlib import Path

from claude_hooks.agents.prompting import Prompts, prompt_context
from claude_hooks.core.domain import Task, TaskState
from claude_hooks.service.runtime import Service
from tests.conftest import ServiceFactory
from tests.support import GateRunner, fixture, forgejo_headers, make_config, wait_until

FIRST = "246c12177952cc30a402916a11d62c5c557a38d0"
SECOND = "1" * 40
THIRD = "2" * 40


async def deliver(service: Service, name: str, delivery: str, head: str) -> dict[str, object]:
    """The fixture `name` about PR 19 (alice's) with its head at `head`, signed anew."""
    body, headers = fixture(name)
    data = json.loads(body)
    pull = data["pull_request"]
    pull.update(number=19, user={**pull["user"], "login": "alice"})
    pull["head"].update(sha=head, ref="alice/config-loader")
    data["number"], data["sender"]["login"] = 19, "alice"
    raw = json.dumps(data).encode()
    event_type = headers["X-Forgejo-Event-Type"]
    answer = await service.intake.receive(forgejo_headers(event_type, raw, delivery), raw)
    return answer.body


async def task(service: Service, task_id: str) -> Task:
    found = await service.store.get_task(task_id)
    assert found is not None
    return found


async def test_a_review_requested_again_looks_at_the_commits_since_the_last_one(
    start_service: ServiceFactory, tmp_path: Path, gate: GateRunner
) -> None:
    config = make_config(
        tmp_path,
        security={"allowed_senders": ["alice"]},
        agents=[{"name": "dev-alpha", "type": "dev"}],
    )
    service = await start_service(config, runner=gate)
    request = "pull_request_review_requested_reviewer"
    first = (await deliver(service, request, "r-1", FIRST))["tasks"][0]["id"]  # type: ignore[index]
    await wait_until(lambda: first in gate.started)
    assert "reviewed_head" not in (await task(service, first)).payload
    # Asked again while the first runs: a whole review too, queued behind it...
    queued = (await deliver(service, request, "r-2", FIRST))["tasks"][0]["id"]  # type: ignore[index]
    # ...and a push before it starts makes it review the new head; the push asks for nothing.
    pushed = await deliver(service, "pull_request_synchronized", "p-1", SECOND)
    assert "tasks" not in pushed
    assert (await task(service, queued)).payload["head_sha"] == SECOND
    gate.release(first)
    await wait_until(lambda: queued in gate.started)
    gate.release(queued)

    async def reviewed() -> bool:
        return (await task(service, queued)).state is TaskState.SUCCEEDED

    await wait_until(reviewed)
    await deliver(service, "pull_request_synchronized", "p-2", THIRD)
    answer = await deliver(service, request, "r-3", THIRD)
    assert "what changed since 1111111111" in str(answer["reason"])
    third = await task(service, answer["tasks"][0]["id"])  # type: ignore[index]
    assert third.payload["reviewed_head"] == SECOND
    assert third.payload["head_sha"] == THIRD
    assert third.payload["previous_review"] == "done by dev-alpha"
    type_config = service.config.types["dev"]
    context = prompt_context(third, type_config, tmp_path, None, "https://forge.example.com")
    prompt = Prompts.for_type(type_config).render("review_pr", context)
    assert f"`{SECOND}..{THIRD}`" in prompt
    assert "done by dev-alpha" in prompt and "your earlier review" in prompt
    gate.release(third.id)
