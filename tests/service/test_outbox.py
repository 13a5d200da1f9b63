"""Forge comments go through the outbox table: kept across a restart, retried in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from claude_hooks.config import Config
from claude_hooks.core.domain import DispatchRequest, TaskKind
from claude_hooks.service.runtime import Service
from tests.fake_forgejo import FakeForgejo
from tests.support import wait_until
from tests.web.test_forge_flows import forge_config

COMMENTS = "/repos/acme/widget/issues/17/comments"


async def work_on_17(service: Service) -> str:
    request = DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", 17)
    return await service.pool.dispatch_by_type("dev", request)


async def finished(service: Service, task_id: str) -> bool:
    task = await service.store.get_task(task_id)
    return task is not None and task.state.finished


async def started(config: Config) -> Service:
    service = await Service.open(config)
    await service.start()
    return service


def kinds(forge: FakeForgejo) -> list[str]:
    bodies = [comment.body for comment in forge.comments]
    return [next(w for w in ("queued", "started", "finished") if w in b) for b in bodies]


async def test_comments_not_posted_before_a_stop_are_posted_after_the_start(
    fake_forgejo: FakeForgejo, tmp_path: Path
) -> None:
    config = forge_config(tmp_path, fake_forgejo)
    config.types["dev"].comments = "each"
    fake_forgejo.fail_next(COMMENTS, status=500)
    first = await started(config)
    try:
        task_id = await work_on_17(first)
        await wait_until(lambda: finished(first, task_id))

        async def all_kept() -> bool:
            letters = await first.store.outbox.waiting(10)
            # The first post failed and waits for its retry; the later ones wait behind it.
            return [letter.attempts for letter in letters] == [1, 0, 0]

        await wait_until(all_kept)
    finally:
        await first.stop()
    assert fake_forgejo.comments == []
    second = await started(config)
    try:

        async def emptied() -> bool:
            return await second.store.outbox.waiting(10) == []

        await wait_until(emptied, timeout=6)  # each deleted once the forge took it
        assert kinds(fake_forgejo) == ["queued", "started", "finished"]
        assert second.outbox.posted == 3
    finally:
        await second.stop()


async def test_a_comment_the_forge_refuses_for_good_is_dropped(
    fake_forgejo: FakeForgejo, tmp_path: Path, caplog: Any
) -> None:
    config = forge_config(tmp_path, fake_forgejo)
    config.types["dev"].comments = "each"
    fake_forgejo.fail_next(COMMENTS, status=404, message="issue not found")
    service = await started(config)
    try:
        await work_on_17(service)

        async def emptied() -> bool:
            return await service.store.outbox.waiting(10) == []

        await wait_until(lambda: len(fake_forgejo.comments) == 2)
        await wait_until(emptied)
        assert kinds(fake_forgejo) == ["started", "finished"]
        assert service.outbox.failed == 1
        assert "gave up the comment on acme/widget#17" in caplog.text
    finally:
        await service.stop()
