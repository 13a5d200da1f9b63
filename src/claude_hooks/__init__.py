"""claude-hooks: turn Forgejo and Gitea webhooks into work for pools of Claude Code agents."""

from claude_hooks.errors import ClaudeHooksError

__all__ = ["ClaudeHooksError", "__version__"]
__version__ = "0.1.0"
