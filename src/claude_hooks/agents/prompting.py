"""Prompts for the `claude` runner: Jinja2 templates per task kind, overridable per type.

The shipped templates live in `claude_hooks/agents/prompts/<name>.md.j2`, one per task kind plus
`system` (appended to Claude Code's own system prompt). A type overrides any of them with
`prompts_dir` (a folder of `<name>.md.j2` files) or `prompts` (inline template text by name);
inline text wins over the folder, the folder over the shipped file.

What came from forge users (titles, bodies, review and comment text, CI output) reaches a
template only through `untrusted(label, value)`, which wraps it in a tag with a random suffix
that the text cannot close early, so the model can tell the task from the data.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from claude_hooks.config import TypeConfig
from claude_hooks.core.domain import Task, TaskKind
from claude_hooks.errors import ClaudeHooksError

SHIPPED_DIR = Path(__file__).with_name("prompts")
SUFFIX = ".md.j2"
SYSTEM = "system"
NAMES: tuple[str, ...] = (SYSTEM, *(kind.value for kind in TaskKind))
UNTRUSTED_TAG = "untrusted-data"
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+\n")


class PromptError(ClaudeHooksError):
    """A prompt template is missing, does not compile, or failed to render."""


def _text(value: Any) -> str:
    if value is None or isinstance(value, jinja2.Undefined):
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


class _Untrusted:
    """`untrusted(label, value)` for one rendering: a fresh tag suffix every time."""

    def __init__(self) -> None:
        self.tag = f"{UNTRUSTED_TAG}-{secrets.token_hex(4)}"

    def __call__(self, label: str, value: Any) -> str:
        text = _text(value).strip()
        if not text:
            return ""
        safe_label = label.replace('"', "'")
        return f'<{self.tag} label="{safe_label}">\n{text}\n</{self.tag}>'


def steering_prompt(messages: list[tuple[str, str]]) -> str:
    """The user turn that hands the running agent the mentions (sender, text) written while
    it worked: data to weigh, fenced like every text from the forge."""
    fence = _Untrusted()
    parts = [fence(f"comment by @{sender}", body) for sender, body in messages]
    return (
        "While you worked, these comments on the issue were addressed to you. Take them into "
        "account in the task you are doing, answer them, then finish the task:\n\n"
        + "\n\n".join(parts)
    )


class Prompts:
    """The templates of one type; `render(name, context)` gives the prompt text."""

    def __init__(self, overrides: Mapping[str, str] | None = None, directory: Path | None = None):
        loaders: list[jinja2.BaseLoader] = []
        if overrides:
            loaders.append(
                jinja2.DictLoader({f"{name}{SUFFIX}": text for name, text in overrides.items()})
            )
        if directory is not None:
            loaders.append(jinja2.FileSystemLoader(directory))
        loaders.append(jinja2.FileSystemLoader(SHIPPED_DIR))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            undefined=jinja2.ChainableUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    @classmethod
    def for_type(cls, type_config: TypeConfig) -> Prompts:
        return cls(
            {str(name): text for name, text in type_config.prompts.items()}, type_config.prompts_dir
        )

    def _template(self, name: str) -> jinja2.Template:
        try:
            return self.env.get_template(f"{name}{SUFFIX}")
        except jinja2.TemplateNotFound:
            raise PromptError(f"no prompt template {name!r}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise PromptError(
                f"prompt template {name!r} does not compile: {exc.message} (line {exc.lineno})"
            ) from None

    def check(self) -> None:
        """Compile every template; PromptError names the first that does not."""
        for name in NAMES:
            self._template(name)

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        template = self._template(name)
        try:
            text = template.render({**context, "untrusted": _Untrusted()})
        except jinja2.TemplateError as exc:
            raise PromptError(f"prompt template {name!r} failed: {exc}") from None
        # A missing payload field leaves an empty line behind: keep one blank line at most.
        return _BLANK_LINES.sub("\n\n", text).strip() + "\n"


def prompt_context(
    task: Task,
    type_config: TypeConfig,
    workdir: Path,
    branch: str | None,
    forge_url: str,
    instructions: str = "",
    test_command: str | None = None,
) -> dict[str, Any]:
    """What a template can use: the task, its payload (any key may be missing), the type, and
    the repository's own instructions and test command (its policy file)."""
    return {
        "task": task,
        "kind": task.kind.value,
        "type": task.type,
        "agent": task.agent,
        "login": type_config.login or task.type,
        "role": type_config.role,
        "repo": task.repo,
        "number": task.number,
        "session_key": task.session_key,
        "attempt": task.attempts,
        "payload": task.payload,
        "workdir": str(workdir),
        "branch": branch,
        "forge_url": forge_url.rstrip("/"),
        "untrusted_tag": UNTRUSTED_TAG,
        "instructions": instructions,
        "test_command": test_command,
    }
