"""The per-repository policy rule: repository over organisation over the service, clipped by
the service's `[policy]`, and failing closed on a broken file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from claude_hooks.config import Config
from claude_hooks.core.decision import Decision
from claude_hooks.core.domain import DispatchRequest, TaskKind
from claude_hooks.core.new_event import RunningTask, superseded
from claude_hooks.core.policy import (
    ORGANISATION,
    REPOSITORY,
    IssueLimits,
    PolicyError,
    PolicyFile,
    effective,
    refuse_broken,
)
from claude_hooks.forge.names import full_name_problem
from tests.support import make_config


def config_with(tmp_path: Path, **policy: Any) -> Config:
    overrides: dict[str, Any] = {"flows": {"max_review_rounds": 3, "max_tasks_per_issue": 12}}
    if policy:
        overrides["policy"] = policy
    return make_config(tmp_path, **overrides)


def org(text: str) -> PolicyFile:
    return PolicyFile(
        ORGANISATION, "acme/.claude-hooks@1111111111:.forgejo/claude-hooks.toml", text
    )


def repo(text: str) -> PolicyFile:
    return PolicyFile(REPOSITORY, "acme/widget@2222222222:.forgejo/claude-hooks.toml", text)


def test_without_files_the_service_decides(tmp_path: Path) -> None:
    policy = effective(config_with(tmp_path), [])
    assert policy.allowed_types == ("boss", "dev", "reviewer")
    assert policy.auto_merge is True
    assert policy.value("max_review_rounds") == 3
    assert {s.layer for s in policy.settings.values()} == {"service"}
    assert policy.notes == ()


def test_repository_over_organisation_over_service_key_by_key(tmp_path: Path) -> None:
    organisation = org(
        'instructions = "Write in British English."\n'
        "max_review_rounds = 2\n"
        "[types.dev]\n"
        'instructions = "Run the linters."\n'
        'labels = ["agent:dev"]\n'
    )
    repository = repo('max_review_rounds = 1\n[types.dev]\ninstructions = "Use uv."\n')
    policy = effective(config_with(tmp_path), [organisation, repository])
    assert policy.settings["max_review_rounds"].value == 1
    assert policy.settings["max_review_rounds"].layer == "repository"
    assert policy.settings["instructions"].layer == "organisation"
    assert policy.settings["types.dev.labels"].value == ("agent:dev",)
    assert policy.settings["types.dev.labels"].layer == "organisation"
    assert policy.instructions_for("dev") == "Write in British English.\n\nUse uv."
    assert policy.instructions_for("reviewer") == "Write in British English."


def test_without_a_policy_section_a_repository_may_only_narrow(tmp_path: Path) -> None:
    repository = repo(
        'allowed_types = ["reviewer", "ghost"]\n'
        "auto_merge = false\n"
        "max_review_rounds = 9\n"
        "max_tasks_per_issue = 4\n"
        'setup = ["make deps"]\n'
        'merge_style = "squash"\n'
        "max_running = {all = 3, dev = 1}\n"
        '[types.dev]\negress = ["pypi.org"]\n'
    )
    policy = effective(config_with(tmp_path), [repository])
    assert policy.allowed_types == ("reviewer",)
    assert policy.auto_merge is False
    assert policy.value("max_review_rounds") == 3  # raising needs [policy] allow
    assert policy.value("max_tasks_per_issue") == 4  # lowering is always allowed
    assert policy.value("setup") == ()
    assert policy.value("merge_style") == "merge"
    assert policy.value("types.dev.egress") is None
    assert policy.max_running() == {"all": 3, "dev": 1}
    notes = "\n".join(policy.notes)
    assert "ghost left out" in notes
    assert "max_review_rounds: 9 clipped to 3: raising it needs [policy] allow" in notes
    assert "setup: not applied" in notes and "merge_style: not applied" in notes
    assert "types.dev.egress: not applied" in notes


def test_policy_allows_and_its_ceilings_clip(tmp_path: Path) -> None:
    config = config_with(
        tmp_path,
        allow=["setup", "egress", "max_review_rounds"],
        max_review_rounds=5,
        max_running={"all": 2},
        daily_budget_usd=10.0,
        egress=["pypi.org"],
    )
    repository = repo(
        'setup = ["make deps"]\n'
        "max_review_rounds = 9\n"
        "daily_budget_usd = 50\n"
        "max_running = {all = 4, dev = 1}\n"
        '[types.dev]\negress = ["pypi.org", "evil.example"]\n'
    )
    policy = effective(config, [repository])
    assert policy.value("setup") == ("make deps",)
    assert policy.value("max_review_rounds") == 5
    assert policy.value("daily_budget_usd") == 10.0
    assert policy.max_running() == {"all": 2, "dev": 1}
    assert policy.value("types.dev.egress") == ("pypi.org",)
    notes = "\n".join(policy.notes)
    assert "max_review_rounds: 9 clipped to the service's ceiling 5" in notes
    assert "daily_budget_usd: 50 clipped to the service's ceiling 10.0" in notes
    assert "evil.example left out" in notes


def test_a_ceiling_applies_to_a_repository_that_sets_nothing(tmp_path: Path) -> None:
    config = config_with(tmp_path, max_running={"all": 2, "dev": 1}, allowed_types=["dev"])
    policy = effective(config, [])
    assert policy.max_running() == {"all": 2, "dev": 1}
    assert policy.allowed_types == ("dev",)
    assert not policy.type_allowed("reviewer")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auto_merge = false\nautomerge = true\n", ":2: unknown key 'automerge'"),
        ("[types.dev]\nlabel = ['x']\n", ":2: unknown key 'types.dev.label'"),
        ("max_running = {all = 1, dev = 'one'}\n", ":1: max_running.dev: Input should be"),
        ("auto_merge = \n", "not valid TOML"),
        ("max_review_rounds = 0\n", ":1: max_review_rounds: Input should be greater"),
    ],
)
def test_a_broken_file_fails_closed_naming_file_line_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(PolicyError) as raised:
        effective(config_with(tmp_path), [org('instructions = "fine"\n'), repo(text)])
    assert "acme/widget@2222222222:.forgejo/claude-hooks.toml" in str(raised.value)
    assert expected in str(raised.value)


def test_the_policy_section_names_only_existing_types(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="policy: 'ghost' is not a type"):
        config_with(tmp_path, max_running={"ghost": 1})


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("acme/.claude-hooks", None),
        ("acme/.profile", None),
        ("acme/widget.", "may not end with '.'"),
        ("acme/..", "may not be '.', '..' or '-'"),
        ("acme/wiki.wiki", "may not end in '.git', '.wiki'"),
    ],
)
def test_repository_names_follow_forgejo_a_leading_dot_included(
    name: str, problem: str | None
) -> None:
    found = full_name_problem(name)
    assert found is None if problem is None else problem in (found or "")


def test_on_new_event_merges_kind_by_kind_over_the_service_and_defaults(tmp_path: Path) -> None:
    config = config_with(tmp_path, allow=["on_new_event"])
    config.types["dev"].on_new_event = {"work_issue": "queue", "answer_mention": "supersede"}
    policy = effective(
        config, [repo('[types.dev]\non_new_event = {answer_mention = "coalesce"}\n')]
    )
    assert policy.on_new_event("dev", "work_issue") == "queue"  # the service's
    assert policy.on_new_event("dev", "answer_mention") == "coalesce"  # the repository's
    assert policy.on_new_event("dev", "review_pr") == "supersede"  # the default
    assert policy.on_new_event("dev", "fix_ci") == "supersede"
    assert policy.on_new_event("reviewer", "address_review") == "coalesce"
    # Without [policy] allow a repository's rule is refused and the service's stays.
    narrow = effective(
        config_with(tmp_path), [repo('[types.dev]\non_new_event = {review_pr = "queue"}\n')]
    )
    assert narrow.on_new_event("dev", "review_pr") == "supersede"
    assert any("on_new_event" in note for note in narrow.notes)


def test_superseding_stops_a_run_of_an_older_head_and_never_for_the_types_own_event() -> None:
    running = RunningTask("t1", {"head_sha": "a" * 40})
    assert superseded("supersede", "b" * 40, running, own=False) == "t1"
    assert superseded("supersede", "a" * 40, running, own=False) is None  # nothing moved
    assert superseded("supersede", "b" * 40, running, own=True) is None
    assert superseded("coalesce", "b" * 40, running, own=False) is None
    assert superseded("queue", "b" * 40, running, own=False) is None
    assert superseded("supersede", None, RunningTask("t2", {}), own=False) == "t2"
    assert superseded("supersede", "b" * 40, None, own=False) is None


def test_per_issue_limits_come_from_the_repository_clipped_by_the_ceilings(
    tmp_path: Path,
) -> None:
    lowered = effective(config_with(tmp_path), [repo("max_tasks_per_issue = 4\n")])
    assert lowered.issue_limits() == IssueLimits(3, 4, None)
    raised = effective(
        config_with(tmp_path, allow=["max_review_rounds"], max_review_rounds=5),
        [repo("max_review_rounds = 9\nmax_tasks_per_issue = 40\n")],
    )
    assert raised.issue_limits() == IssueLimits(5, 12, None)  # a ceiling, and no allow


def test_a_broken_file_refuses_the_repositorys_new_work_with_one_comment(
    tmp_path: Path,
) -> None:
    broken = repo("[types.dev]\nlabel = ['x']\n")
    with pytest.raises(PolicyError) as caught:
        effective(config_with(tmp_path), [broken])
    widget = DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", 17)
    gadget = DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/gadget", 3)
    decision = Decision(reason="assigned", dispatch=[("dev", widget), ("dev", gadget)])
    decision.stop = [("t1", widget.session_key)]
    refuse_broken(decision, "acme/widget", caught.value)
    assert decision.dispatch == [("dev", gadget)] and decision.stop == []
    assert decision.reason.startswith("assigned; no agent work in acme/widget")
    assert ".forgejo/claude-hooks.toml:2: unknown key 'types.dev.label'" in decision.reason
    [fault] = decision.policy_faults
    assert (fault.repo, fault.file_sha) == ("acme/widget", broken.sha)
    assert fault.comment.number == 17 and "types.dev.label" in fault.comment.body
    # The file's version is its git blob sha: the same text anywhere is the same file.
    assert broken.sha == repo(broken.text).sha != repo("x = 1\n").sha
    assert len(broken.sha) == 40
