"""The package's exceptions: one base class, each message says what happened and what to do.

ClaudeHooksError
├── ConfigError          the configuration cannot be used
├── StoreError           the database cannot be opened or migrated
├── NoInstanceError      no enabled instance of a type can take a task
├── NotFoundError        an agent or task id that does not exist
│   ├── UnknownAgentError
│   └── UnknownTaskError
├── InvalidInputError    a malformed request or argument
│   └── AmbiguousTaskError
└── ConflictError        the request does not fit the current state (duplicate name, idle agent)
"""

from __future__ import annotations


class ClaudeHooksError(Exception):
    """Something claude-hooks cannot do; the message says why and what to do."""


class ConfigError(ClaudeHooksError):
    """The configuration is invalid."""


class InvalidInputError(ClaudeHooksError):
    """A request or argument is malformed."""


class StoreError(ClaudeHooksError):
    """The database cannot be used."""


class NoDatabaseYet(StoreError):
    """A read-only command found no database (or one with no tables): nothing to read."""


class NoInstanceError(ClaudeHooksError):
    """No enabled instance of the requested type exists."""

    def __init__(self, agent_type: str) -> None:
        super().__init__(
            f"no instance registered for type {agent_type!r}: "
            f"add one with 'claude-hooks agents add NAME --type {agent_type}'"
        )
        self.agent_type = agent_type


class NotFoundError(ClaudeHooksError):
    """A named thing does not exist."""


class UnknownAgentError(NotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no agent named {name!r}: see 'claude-hooks agents list'")
        self.name = name


class UnknownTaskError(NotFoundError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task with id {task_id!r}: see 'claude-hooks tasks list'")
        self.task_id = task_id


class AmbiguousTaskError(InvalidInputError):
    def __init__(self, shown: str, matches: list[str], more: bool) -> None:
        listed = ", ".join(matches) + (", ..." if more else "")
        super().__init__(
            f"task id {shown!r} matches several tasks ({listed}): give more of its characters"
        )
        self.shown = shown
        self.matches = matches


class ConflictError(ClaudeHooksError):
    """The request conflicts with the current state."""


class PeerUnreachableError(ClaudeHooksError):
    """Another node holds what was asked for (a task's log) and did not answer."""
