"""`claude-hooks policy check REPO`: a repository's effective policy, each value with the layer
it came from (service, organisation, repository), or the errors that make it fail closed."""

from __future__ import annotations

import asyncio
import json
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from claude_hooks.cli.options import ConfigOption, chosen_config
from claude_hooks.config import config_path, load_config
from claude_hooks.errors import ClaudeHooksError, InvalidInputError
from claude_hooks.forge.names import full_name_problem

if TYPE_CHECKING:
    from claude_hooks.core.policy import Policy

EXAMPLE_PATH = ".forgejo/claude-hooks.toml"


def example_text() -> str:
    """The commented example of a repository's file that `init --repository` writes."""
    return (
        resources.files("claude_hooks.cli").joinpath("templates/repository-policy.toml").read_text()
    )


def write_example(directory: Path, force: bool) -> Path:
    """Write the example into a repository's checkout; ClaudeHooksError if it exists."""
    path = directory / EXAMPLE_PATH
    if path.exists() and not force:
        raise InvalidInputError(f"{str(path)!r} already exists: pass --force to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(example_text(), encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


policy_app = typer.Typer(
    help="Per-repository policy: what each repository's file sets.", no_args_is_help=True
)


def _say(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")


@policy_app.command("check")
def check(
    repo: Annotated[str, typer.Argument(help="The repository, as owner/name.")],
    ref: Annotated[
        str | None,
        typer.Option(help="Branch (or commit sha) to read the file from; default: the default."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config_file: ConfigOption = None,
) -> None:
    """Print the effective policy of REPO with where each value came from, or its errors."""
    from claude_hooks.core.policy import PolicyError, effective
    from claude_hooks.forge.gateway import Forge  # the HTTP client: only for this command
    from claude_hooks.forge.policy_files import PolicyFiles

    problem = full_name_problem(repo)
    if problem is not None:
        _say(f"REPO {problem}")
        raise typer.Exit(2)
    try:
        config = load_config(config_path(chosen_config(config_file)))
    except ClaudeHooksError as exc:
        _say(str(exc))
        raise typer.Exit(2) from None
    if not config.forgejo.url:
        _say("no [forgejo] url in the configuration: the files are read from the forge")
        raise typer.Exit(2)

    async def read() -> Policy:
        forge = Forge(config)
        try:
            files = await PolicyFiles(lambda: forge.client(None)).for_repository(repo, ref)
            return effective(config, files)
        finally:
            await forge.aclose()

    try:
        policy = asyncio.run(read())
    except PolicyError as exc:
        for line in exc.problems:
            _say(line)
        raise typer.Exit(1) from None
    except ClaudeHooksError as exc:
        _say(str(exc))
        raise typer.Exit(1) from None
    if as_json:
        body = {
            "files": list(policy.files),
            "settings": {
                key: {"value": s.value, "from": s.layer} for key, s in policy.settings.items()
            },
            "notes": list(policy.notes),
        }
        sys.stdout.write(json.dumps(body, indent=2, default=list) + "\n")
        return
    sys.stdout.write("files: " + (", ".join(policy.files) or "none (service defaults)") + "\n")
    sys.stdout.writelines(line + "\n" for line in policy.lines())
    sys.stdout.writelines(f"clipped: {note}\n" for note in policy.notes)
