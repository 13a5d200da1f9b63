"""The egress list (`[types.<t>] egress`): what it allows, and what a bad entry says."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from claude_hooks.config import load_config
from claude_hooks.core.domain import Task, TaskKind, TaskState
from claude_hooks.core.egress import EgressPolicy
from claude_hooks.errors import ConfigError
from claude_hooks.service.events import Event
from claude_hooks.service.notifier import task_comment
from claude_hooks.store.egress import EgressBlock

PUBLIC = [ipaddress.ip_address("151.101.0.223")]


def test_a_host_means_ports_80_and_443_and_host_port_that_port_only() -> None:
    policy = EgressPolicy.of(["PyPI.org.", "files.pythonhosted.org:443", "[::1]:8080"])
    assert policy.listed("pypi.org", 443) and policy.listed("pypi.org", 80)
    assert not policy.listed("pypi.org", 22)
    assert policy.listed("files.pythonhosted.org", 443)
    assert not policy.listed("files.pythonhosted.org", 80)
    assert not policy.listed("evil.pypi.org", 443), "no wildcards, no subdomains"
    assert policy.listed("::1", 8080) and policy.listed("0:0::1", 8080)
    assert not EgressPolicy().listed("pypi.org", 443), "the default allows nothing"


def test_a_listed_name_that_resolves_to_a_private_address_is_refused_unless_listed() -> None:
    policy = EgressPolicy.of(["pypi.org", "10.0.0.5:443"])
    inside = [ipaddress.ip_address(a) for a in ("127.0.0.1", "10.0.0.9", "169.254.169.254")]
    assert policy.reachable("pypi.org", 443, PUBLIC) == PUBLIC
    assert policy.reachable("pypi.org", 443, inside) == []
    assert policy.reachable("pypi.org", 443, [*inside, *PUBLIC]) == PUBLIC
    listed = ipaddress.ip_address("10.0.0.5")
    assert policy.reachable("pypi.org", 443, [listed]) == [listed]
    assert policy.reachable("pypi.org", 80, [listed]) == [], "listed for 443 only"
    mapped = ipaddress.ip_address("::ffff:127.0.0.1")
    assert policy.reachable("pypi.org", 443, [mapped]) == []


@pytest.mark.parametrize(
    "entry", ["*.pypi.org", "https://pypi.org", "pypi.org:0", "pypi.org:70000", "", "a..b"]
)
def test_a_bad_entry_is_a_config_error_naming_it(tmp_path: Path, entry: str) -> None:
    path = tmp_path / "claude-hooks.toml"
    path.write_text(f'[types.dev]\nrunner = "command"\ncommand = ["true"]\negress = ["{entry}"]\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"egress entry {entry!r} is not a host or host:port" in str(caught.value)


def test_the_final_comment_names_what_was_blocked() -> None:
    task = Task(
        id="t1", type="dev", agent="dev-1", kind=TaskKind.WORK_ISSUE, session_key="k",
        repo="acme/widget", number=7, state=TaskState.SUCCEEDED, seq=1, enqueued_at=0.0,
        started_at=0.0, finished_at=5.0,
    )  # fmt: skip
    blocked = [EgressBlock("evil.example", 443, 3), EgressBlock("10.0.0.1", 80, 1)]
    comment = task_comment(Event("task.finished", task, {"egress_blocked": blocked}))
    assert comment is not None
    assert comment.endswith("Egress blocked: evil.example:443 ×3, 10.0.0.1:80 ×1")  # noqa: RUF001
    plain = task_comment(Event("task.finished", task, {"egress_blocked": []}))
    assert plain is not None and "blocked" not in plain
