"""Each instance's account name: `<sandbox_user>-<instance>` while it fits useradd's 32
characters, else the instance's name cut short with a hash of it, so two instances never
share an account."""

from __future__ import annotations

from claude_hooks.agents.sandbox import MAX_ACCOUNT_NAME, account_name


def test_a_short_instance_name_is_kept_whole() -> None:
    assert account_name("claude-hooks-agent", "dev-1") == "claude-hooks-agent-dev-1"


def test_long_instance_names_stay_within_the_limit_and_apart() -> None:
    first = account_name("claude-hooks-agent", "reviewer-for-the-frontend-team-1")
    second = account_name("claude-hooks-agent", "reviewer-for-the-frontend-team-2")
    assert len(first) <= MAX_ACCOUNT_NAME and len(second) <= MAX_ACCOUNT_NAME
    assert first != second
    assert first.startswith("claude-hooks-agent-revi")
    assert account_name("claude-hooks-agent", "reviewer-for-the-frontend-team-1") == first


def test_a_prefix_too_long_for_any_of_the_name_still_gives_one_apart() -> None:
    prefix = "a-very-long-sandbox-user-name-here"
    names = {account_name(prefix, f"dev-{n}") for n in range(50)}
    assert len(names) == 50
    assert all(len(name) <= MAX_ACCOUNT_NAME for name in names)
