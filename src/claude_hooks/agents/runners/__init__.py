"""Agent runners: how one task is carried out by an agent process."""

from claude_hooks.agents.runners.base import AgentRunner, RunContext, RunResult

__all__ = ["AgentRunner", "RunContext", "RunResult"]
