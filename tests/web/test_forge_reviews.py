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


async def deliver(
    service: Service, name: str, delivery: str, head: str, sender: str = "alice"
) -> dict[str, object]:
    """The fixture `name` about PR 19 (alice's) with its head at `head`, sent by `sender`,
    signed anew."""
    body, headers = fixture(name)
    data = json.loads(body)
    pull = data["pull_request"]
    pull.update(number=19, user={**pull["user"], "login": "alice"})
    pull["head"].update(sha=head, ref="alice/config-loader")
    data["number"], data["sender"]["login"] = 19, sender
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
    # ...and a push before it starts makes it review the new head; the running review of
    # the old head is superseded (the default for review_pr), so the queued one runs next.
    pushed = await deliver(service, "pull_request_synchronized", "p-1", SECOND)
    assert [t["id"] for t in pushed["tasks"]] == [queued]  # type: ignore[index]
    assert pushed["cancelled"] == [first]
    assert (await task(service, queued)).payload["head_sha"] == SECOND
    await wait_until(lambda: first in gate.cancelled)
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


def review_config(tmp_path: Path, **dev: object) -> object:
    config = make_config(
        tmp_path,
        security={"allowed_senders": ["alice"]},
        agents=[{"name": "dev-alpha", "type": "dev"}],
    )
    for key, value in dev.items():
        setattr(config.types["dev"], key, value)
    return config


async def test_a_push_supersedes_the_running_review_of_the_old_head_but_not_its_own_push(
    start_service: ServiceFactory, tmp_path: Path, gate: GateRunner
) -> None:
    service = await start_service(review_config(tmp_path), runner=gate)
    request = "pull_request_review_requested_reviewer"
    first = (await deliver(service, request, "r-1", FIRST))["tasks"][0]["id"]  # type: ignore[index]
    await wait_until(lambda: first in gate.started)
    # The type's own push (dev-bot's) never stops its own running review.
    own = await deliver(service, "pull_request_synchronized", "p-own", SECOND, sender="dev-bot")
    assert "tasks" not in own and "cancelled" not in own
    assert (await task(service, first)).state is TaskState.RUNNING
    # A human's push does: the review of FIRST is stopped, one of THIRD runs instead.
    pushed = await deliver(service, "pull_request_synchronized", "p-1", THIRD)
    assert pushed["cancelled"] == [first]
    assert "supersedes dev's running task" in str(pushed["reason"])
    [entry] = pushed["tasks"]  # type: ignore[attr-defined]
    await wait_until(lambda: first in gate.cancelled)
    await wait_until(lambda: entry["id"] in gate.started)
    new = await task(service, entry["id"])
    assert (new.kind.value, new.payload["head_sha"]) == ("review_pr", THIRD)
    assert (await task(service, first)).state is TaskState.CANCELLED
    gate.release_all()


async def test_on_new_event_queue_gives_a_task_per_event_and_coalesce_one(
    start_service: ServiceFactory, tmp_path: Path, gate: GateRunner
) -> None:
    config = review_config(tmp_path, on_new_event={"review_pr": "queue"})
    service = await start_service(config, runner=gate)
    request = "pull_request_review_requested_reviewer"
    first = (await deliver(service, request, "r-1", FIRST))["tasks"][0]["id"]  # type: ignore[index]
    await wait_until(lambda: first in gate.started)
    ids = [
        (await deliver(service, request, f"r-{n}", FIRST))["tasks"][0]["id"]  # type: ignore[index]
        for n in (2, 3)
    ]
    assert len(set(ids)) == 2  # queue: two tasks, where coalesce merges the second into one
    # A push does not supersede under `queue`: the running review goes on.
    pushed = await deliver(service, "pull_request_synchronized", "p-1", SECOND)
    assert "cancelled" not in pushed
    assert (await task(service, first)).state is TaskState.RUNNING
    gate.release_all()
