"""`claude-hooks labels sync REPO`: create the labels that assign agent types on a repository
(`[types.<t>] labels`), so people can pick them from Forgejo's label menu."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console

from claude_hooks.cli.options import ConfigOption, command_config, fail
from claude_hooks.config import Config
from claude_hooks.errors import ClaudeHooksError
from claude_hooks.forge.names import full_name_problem

labels_app = typer.Typer(help="Create the agent labels on a repository.", no_args_is_help=True)
out = Console(markup=False, highlight=False, soft_wrap=True)


async def _sync(config: Config, repo: str, names: list[str]) -> list[str]:
    from claude_hooks.forge.gateway import Forge  # the HTTP client: only for this command

    forge = Forge(config)
    try:
        return await forge.sync_labels(repo, names)
    finally:
        await forge.aclose()


@labels_app.command("sync")
def labels_sync(
    repo: Annotated[str, typer.Argument(help="The repository, owner/name.")],
    config_file: ConfigOption = None,
) -> None:
    """Create every label of [types.<t>] labels that REPO does not have yet."""
    config = command_config(config_file)
    problem = full_name_problem(repo)
    if problem is not None:
        fail(f"repository {repo!r}: {problem}", 2)
    if not config.forgejo.url:
        fail("forgejo.url is not set: labels are created through the Forgejo API", 2)
    names = sorted({name for t in config.types.values() for name in t.labels})
    if not names:
        fail('no agent type has labels: set [types.<t>] labels = ["agent:<t>"] first', 2)
    try:
        created = asyncio.run(_sync(config, repo, names))
    except ClaudeHooksError as exc:
        fail(str(exc))
    for name in names:
        out.print(f"{name}: {'created' if name in created else 'already there'}")
