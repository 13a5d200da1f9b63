"""The `merge` runner: merges an approved pull request through the Forgejo API, no agent needed.

For a merge type that should not think, only merge: it merges exactly the head that was
approved (`head_commit_id`), so a push after the approval makes the merge fail instead of
merging unreviewed code.
"""

from __future__ import annotations

from claude_hooks.agents.runners.base import RunContext, RunResult
from claude_hooks.config import FlowsConfig
from claude_hooks.forge.client import ForgejoError
from claude_hooks.forge.gateway import Forge


class MergeRunner:
    def __init__(self, forge: Forge, flows: FlowsConfig) -> None:
        self.forge = forge
        self.flows = flows

    async def run(self, ctx: RunContext) -> RunResult:
        task = ctx.task
        number = task.payload.get("pr_number")
        if not isinstance(number, int):
            return RunResult(succeeded=False, error="the task names no pull request to merge")
        if not self.forge.enabled:
            return RunResult(succeeded=False, error="[forgejo] url is not set: cannot merge")
        owner, _, name = task.repo.partition("/")
        head = task.payload.get("head_sha")
        try:
            result = await self.forge.client(task.type).merge(
                owner,
                name,
                number,
                style=ctx.merge_style or self.flows.merge_style,
                head_commit_id=head if isinstance(head, str) and head else None,
            )
        except ForgejoError as exc:
            return RunResult(succeeded=False, error=f"merge of {task.repo}#{number} failed: {exc}")
        text = "merged" if result.merged else "scheduled to merge when checks succeed"
        return RunResult(succeeded=True, exit_code=0, result=f"{task.repo}#{number} {text}")
