"""ForgejoClient against the fake Forgejo over real HTTP on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from claude_hooks.forge.client import (
    CombinedStatus,
    CommitStatus,
    ForgejoClient,
    ForgejoError,
    ForgejoForbidden,
    ForgejoMergeRefused,
    ForgejoNotFound,
    ForgejoUnauthorized,
    ForgejoUnavailable,
    IssueInfo,
    MergeResult,
    PullInfo,
)
from tests.fake_forgejo import FakeForgejo

TOKEN = "tok-boss-0123456789"
REPO = ("acme", "widget")
SHA_A = "a" * 40
SHA_C = "c" * 40


@pytest.fixture
def forge() -> Iterator[FakeForgejo]:
    """acme/widget with issue #17 and PR #18 (head C); boss-bot, the token's account, is admin."""
    with FakeForgejo() as fake:
        fake.add_token(TOKEN, "boss-bot")
        fake.add_repo(*REPO, collaborators={"boss-bot": "admin", "alice": "write", "bob": "read"})
        fake.add_user("carol")
        fake.add_issue(
            *REPO, number=17, title="Retry flaky uploads", body="It fails.", assignees=["dev-bot"]
        )
        fake.add_pull(
            *REPO,
            number=18,
            head_sha=SHA_C,
            head_ref="dev-bot/issue-17-retry",
            title="Retry uploads",
            body="Fixes #17",
            user="dev-bot",
        )
        yield fake


@pytest.fixture
async def client(forge: FakeForgejo) -> AsyncIterator[ForgejoClient]:
    async with ForgejoClient(
        forge.base_url, TOKEN, label="boss", timeout=2.0, retries=3, backoff=0.01
    ) as c:
        yield c


# -- permission ------------------------------------------------------------------------------


async def test_dot_segments_stay_in_their_place(forge: FakeForgejo, client: ForgejoClient) -> None:
    """`..` as an owner or repository is sent as `%2E%2E`: URL normalisation cannot turn the
    permission look-up into a request for another endpoint."""
    assert await client.permission("..", "..", "alice") == "none"
    assert [r.path for r in forge.requests][-1] == "/repos/../../collaborators/alice/permission"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("boss-bot", "admin"),
        ("alice", "write"),
        ("bob", "read"),
        ("acme", "owner"),
        ("carol", "read"),  # not a collaborator: a public repo gives every user read access
        ("nobody", "none"),  # unknown to Forgejo: 404
    ],
)
async def test_permission(client: ForgejoClient, user: str, expected: str) -> None:
    assert await client.permission(*REPO, user) == expected


async def test_permission_non_collaborator_on_private_repo_is_none(
    forge: FakeForgejo, client: ForgejoClient
) -> None:
    forge.add_repo("acme", "secret", private=True, collaborators={"boss-bot": "admin"})
    assert await client.permission("acme", "secret", "carol") == "none"
    assert await client.can_write("acme", "secret", "carol") is False


@pytest.mark.parametrize(
    ("user", "expected"),
    [("acme", True), ("boss-bot", True), ("alice", True), ("bob", False), ("nobody", False)],
)
async def test_can_write(client: ForgejoClient, user: str, expected: bool) -> None:
    assert await client.can_write(*REPO, user) is expected


async def test_permission_of_others_needs_repo_admin(forge: FakeForgejo) -> None:
    forge.add_token("tok-dev", "dev-bot")
    forge.set_permission(*REPO, "dev-bot", "write")
    async with ForgejoClient(forge.base_url, "tok-dev", label="dev", backoff=0.01) as dev:
        assert await dev.permission(*REPO, "dev-bot") == "write"
        with pytest.raises(ForgejoForbidden) as caught:
            await dev.permission(*REPO, "alice")
    assert caught.value.status == 403
    assert "type 'dev'" in str(caught.value)
    assert "Only admins can query" in str(caught.value)
    assert len(forge.requests_to("/repos/acme/widget/collaborators/alice/permission")) == 1


# -- comment ---------------------------------------------------------------------------------


async def test_comment_is_posted_as_the_token_account(
    forge: FakeForgejo, client: ForgejoClient
) -> None:
    first = await client.comment(*REPO, 17, "Queued on dev-alpha.")
    second = await client.comment(*REPO, 18, "Started.")
    assert second > first
    assert [(c.id, c.repo, c.number, c.body, c.user) for c in forge.comments] == [
        (first, "acme/widget", 17, "Queued on dev-alpha.", "boss-bot"),
        (second, "acme/widget", 18, "Started.", "boss-bot"),
    ]


async def test_comment_on_missing_issue_names_it(forge: FakeForgejo, client: ForgejoClient) -> None:
    with pytest.raises(ForgejoNotFound) as caught:
        await client.comment(*REPO, 99, "hello")
    assert "acme/widget#99" in str(caught.value)
    assert caught.value.status == 404
    assert forge.comments == []


async def test_comment_is_not_repeated_after_a_500(
    forge: FakeForgejo, client: ForgejoClient
) -> None:
    path = "/repos/acme/widget/issues/17/comments"
    forge.fail_next(path, 1)
    with pytest.raises(ForgejoUnavailable, match="not retried because it may have taken effect"):
        await client.comment(*REPO, 17, "once")
    assert len(forge.requests_to(path)) == 1


async def test_comment_is_retried_after_a_503(forge: FakeForgejo, client: ForgejoClient) -> None:
    path = "/repos/acme/widget/issues/17/comments"
    forge.fail_next(path, 2, status=503, message="maintenance")
    await client.comment(*REPO, 17, "eventually")
    assert len(forge.requests_to(path)) == 3
    assert [c.body for c in forge.comments] == ["eventually"]


async def test_comment_is_not_repeated_after_a_timeout(forge: FakeForgejo) -> None:
    path = "/repos/acme/widget/issues/17/comments"
    forge.hang_next(path, 5, seconds=10)
    async with ForgejoClient(forge.base_url, TOKEN, timeout=0.2, backoff=0.01) as c:
        with pytest.raises(ForgejoUnavailable, match=r"no answer within 0\.2 s"):
            await c.comment(*REPO, 17, "once")
    assert len(forge.requests_to(path)) == 1


# -- combined status -------------------------------------------------------------------------


async def test_combined_status(forge: FakeForgejo, client: ForgejoClient) -> None:
    forge.add_status(*REPO, SHA_C, "ci/lint", "success", description="ok")
    forge.add_status(*REPO, SHA_C, "ci/test", "pending")
    forge.add_status(
        *REPO, SHA_C, "ci/test", "error", target_url="https://ci.example/1", description="boom"
    )
    status = await client.combined_status(*REPO, SHA_C)
    assert status == CombinedStatus(
        state="failure",  # Forgejo reports error as failure in the combined state
        sha=SHA_C,
        total_count=2,
        statuses=(
            CommitStatus("ci/test", "error", "https://ci.example/1", "boom"),
            CommitStatus("ci/lint", "success", "", "ok"),
        ),
    )


async def test_combined_status_without_statuses_is_empty(client: ForgejoClient) -> None:
    assert await client.combined_status(*REPO, SHA_A) == CombinedStatus("", "", 0, ())


async def test_combined_status_quotes_the_ref(forge: FakeForgejo, client: ForgejoClient) -> None:
    forge.add_status(*REPO, "feature/x", "ci", "success")
    status = await client.combined_status(*REPO, "feature/x")
    assert status.state == "success"
    assert forge.requests_to("/repos/acme/widget/commits/feature/x/status")


# -- pulls -----------------------------------------------------------------------------------


async def test_get_pull(client: ForgejoClient) -> None:
    assert await client.get_pull(*REPO, 18) == PullInfo(
        number=18,
        state="open",
        merged=False,
        head_sha=SHA_C,
        head_ref="dev-bot/issue-17-retry",
        base_ref="main",
        user_login="dev-bot",
        body="Fixes #17",
        title="Retry uploads",
        html_url="https://forge.example.com/acme/widget/pulls/18",
        head_repo="acme/widget",
    )


@pytest.mark.parametrize("number", [17, 99])
async def test_get_pull_not_found(client: ForgejoClient, number: int) -> None:
    with pytest.raises(ForgejoNotFound, match=rf"no pull request acme/widget#{number} \(404"):
        await client.get_pull(*REPO, number)


async def test_unknown_repo_is_named(client: ForgejoClient) -> None:
    with pytest.raises(ForgejoNotFound, match="repository acme/nope"):
        await client.open_pulls("acme", "nope")


def _add_pulls(forge: FakeForgejo, count: int) -> None:
    for n in range(100, 100 + count):
        forge.add_pull(*REPO, number=n, head_sha=f"{n:040x}", head_ref=f"b{n}")


@pytest.mark.parametrize(
    ("page_size", "extra", "expected_pages"),
    [(50, 120, 3), (50, 49, 1), (20, 120, 7), (50, 0, 1)],
)
async def test_open_pulls_pages_through_everything(
    forge: FakeForgejo, client: ForgejoClient, page_size: int, extra: int, expected_pages: int
) -> None:
    forge.max_page_size = page_size
    _add_pulls(forge, extra)
    forge.add_pull(*REPO, number=500, head_sha=SHA_A, head_ref="old", state="closed")
    pulls = await client.open_pulls(*REPO)
    assert sorted(p.number for p in pulls) == sorted([18, *range(100, 100 + extra)])
    pages = forge.requests_to("/repos/acme/widget/pulls", "GET")
    assert [r.query for r in pages] == [
        {"state": "open", "page": str(page), "limit": "50"} for page in range(1, expected_pages + 1)
    ]


async def test_pull_for_head(forge: FakeForgejo, client: ForgejoClient) -> None:
    _add_pulls(forge, 60)
    found = await client.pull_for_head(*REPO, f"{159:040x}")
    assert found is not None
    assert (found.number, found.head_ref) == (159, "b159")
    assert (await client.pull_for_head(*REPO, SHA_C) or found).number == 18
    assert await client.pull_for_head(*REPO, SHA_A) is None


# -- merge -----------------------------------------------------------------------------------


async def test_merge_now(forge: FakeForgejo, client: ForgejoClient) -> None:
    result = await client.merge(
        *REPO,
        18,
        style="squash",
        head_commit_id=SHA_C,
        delete_branch=True,
        title="Retry uploads (#18)",
        message="Closes #17",
    )
    assert result == MergeResult(merged=True, scheduled=False)
    [merge] = forge.merges
    assert (merge.repo, merge.number, merge.user, merge.status) == (
        "acme/widget",
        18,
        "boss-bot",
        200,
    )
    assert merge.body == {
        "Do": "squash",
        "MergeTitleField": "Retry uploads (#18)",
        "MergeMessageField": "Closes #17",
        "head_commit_id": SHA_C,
        "merge_when_checks_succeed": False,
        "delete_branch_after_merge": True,
    }
    pull = await client.get_pull(*REPO, 18)
    assert (pull.state, pull.merged) == ("closed", True)


async def test_merge_minimal_body(forge: FakeForgejo, client: ForgejoClient) -> None:
    await client.merge(*REPO, 18)
    assert forge.merges[0].body == {
        "Do": "merge",
        "merge_when_checks_succeed": False,
        "delete_branch_after_merge": False,
    }


async def test_merge_when_checks_succeed_is_scheduled(
    forge: FakeForgejo, client: ForgejoClient
) -> None:
    forge.add_status(*REPO, SHA_C, "ci/test", "pending")
    result = await client.merge(*REPO, 18, when_checks_succeed=True)
    assert result == MergeResult(merged=False, scheduled=True)
    assert forge.merges[0].status == 201
    assert (await client.get_pull(*REPO, 18)).merged is False


async def test_merge_when_checks_already_succeeded_merges(
    forge: FakeForgejo, client: ForgejoClient
) -> None:
    forge.add_status(*REPO, SHA_C, "ci/test", "success")
    assert await client.merge(*REPO, 18, when_checks_succeed=True) == MergeResult(True, False)


async def test_merge_already_merged_is_405(forge: FakeForgejo, client: ForgejoClient) -> None:
    await client.merge(*REPO, 18)
    with pytest.raises(ForgejoMergeRefused) as caught:
        await client.merge(*REPO, 18)
    assert caught.value.status == 405
    assert caught.value.forgejo_message == "The PR is already merged"
    assert "will not merge pull request acme/widget#18 (405: The PR is already merged)" in str(
        caught.value
    )


async def test_merge_head_moved_is_409(forge: FakeForgejo, client: ForgejoClient) -> None:
    with pytest.raises(ForgejoMergeRefused, match=r"\(409: head out of date\): the head moved"):
        await client.merge(*REPO, 18, head_commit_id=SHA_A)
    assert (await client.get_pull(*REPO, 18)).merged is False


async def test_merge_configured_refusal(forge: FakeForgejo, client: ForgejoClient) -> None:
    forge.refuse_merge(*REPO, 18, 405, "Please try again later")
    with pytest.raises(ForgejoMergeRefused) as caught:
        await client.merge(*REPO, 18)
    assert (caught.value.status, caught.value.forgejo_message) == (405, "Please try again later")
    assert [m.status for m in forge.merges] == [405]
    assert await client.merge(*REPO, 18) == MergeResult(True, False)


async def test_merge_without_write_access_is_refused(forge: FakeForgejo) -> None:
    forge.add_token("tok-bob", "bob")
    async with ForgejoClient(forge.base_url, "tok-bob", backoff=0.01) as bob:
        with pytest.raises(ForgejoMergeRefused, match="User not allowed to merge PR"):
            await bob.merge(*REPO, 18)


async def test_merge_is_not_repeated_after_a_500(forge: FakeForgejo, client: ForgejoClient) -> None:
    forge.fail_next("/repos/acme/widget/pulls/18/merge", 1)
    with pytest.raises(ForgejoUnavailable, match="check the forge before trying again"):
        await client.merge(*REPO, 18)
    assert len(forge.requests_to("/repos/acme/widget/pulls/18/merge")) == 1


async def test_merge_of_closed_pull_is_not_found(forge: FakeForgejo, client: ForgejoClient) -> None:
    forge.add_pull(*REPO, number=20, head_sha=SHA_A, head_ref="x", state="closed")
    with pytest.raises(ForgejoNotFound, match="pull request acme/widget#20"):
        await client.merge(*REPO, 20)


# -- issues ----------------------------------------------------------------------------------


async def test_get_issue(client: ForgejoClient) -> None:
    assert await client.get_issue(*REPO, 17) == IssueInfo(
        number=17,
        title="Retry flaky uploads",
        body="It fails.",
        state="open",
        user_login="alice",
        assignees=("dev-bot",),
        is_pull=False,
    )


async def test_get_issue_of_a_pull(client: ForgejoClient) -> None:
    issue = await client.get_issue(*REPO, 18)
    assert (issue.is_pull, issue.assignees, issue.user_login) == (True, (), "dev-bot")


async def test_get_missing_issue(client: ForgejoClient) -> None:
    with pytest.raises(ForgejoNotFound, match="no issue acme/widget#404"):
        await client.get_issue(*REPO, 404)


# -- retries, timeouts, auth -------------------------------------------------------------------


async def test_retries_succeed_after_two_500s(forge: FakeForgejo, client: ForgejoClient) -> None:
    forge.fail_next("/repos/acme/widget/pulls/18", 2)
    assert (await client.get_pull(*REPO, 18)).number == 18
    assert len(forge.requests_to("/repos/acme/widget/pulls/18")) == 3


async def test_gives_up_after_retries(
    forge: FakeForgejo, client: ForgejoClient, caplog: pytest.LogCaptureFixture
) -> None:
    forge.fail_next("/repos/acme/widget/issues/17", 10, status=502, message="bad gateway")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ForgejoUnavailable) as caught:
        await client.get_issue(*REPO, 17)
    message = str(caught.value)
    assert "after 4 attempts (last: 502 Bad Gateway: bad gateway)" in message
    assert "check that Forgejo is up" in message
    assert len(forge.requests_to("/repos/acme/widget/issues/17")) == 4
    assert TOKEN not in message
    assert TOKEN not in caplog.text


async def test_no_retries_on_4xx(forge: FakeForgejo, client: ForgejoClient) -> None:
    forge.fail_next("/repos/acme/widget/issues/17", 3, status=403, message="token scope")
    with pytest.raises(ForgejoForbidden, match=r"403: token scope"):
        await client.get_issue(*REPO, 17)
    assert len(forge.requests_to("/repos/acme/widget/issues/17")) == 1


async def test_other_4xx_carries_forgejo_message(forge: FakeForgejo, client: ForgejoClient) -> None:
    forge.fail_next("/repos/acme/widget/issues/17/comments", status=422, message="body too long")
    with pytest.raises(ForgejoError) as caught:
        await client.comment(*REPO, 17, "x")
    assert type(caught.value) is ForgejoError
    assert (caught.value.status, caught.value.forgejo_message) == (422, "body too long")


async def test_timeout_then_success(forge: FakeForgejo) -> None:
    forge.hang_next("/repos/acme/widget/pulls/18", 1, seconds=10)
    async with ForgejoClient(forge.base_url, TOKEN, timeout=0.2, backoff=0.01) as c:
        assert (await c.get_pull(*REPO, 18)).head_sha == SHA_C
    assert len(forge.requests_to("/repos/acme/widget/pulls/18")) == 2


async def test_timeouts_give_up(forge: FakeForgejo) -> None:
    forge.hang_next("/repos/acme/widget/pulls/18", 5, seconds=10)
    started = time.monotonic()
    async with ForgejoClient(forge.base_url, TOKEN, timeout=0.2, retries=1, backoff=0.01) as c:
        with pytest.raises(ForgejoUnavailable, match=r"after 2 attempts \(last: no answer within"):
            await c.get_pull(*REPO, 18)
    assert time.monotonic() - started < 2
    assert len(forge.requests_to("/repos/acme/widget/pulls/18")) == 2


async def test_bad_token_names_the_type(forge: FakeForgejo) -> None:
    async with ForgejoClient(forge.base_url, "wrong-secret", label="dev", backoff=0.01) as c:
        with pytest.raises(ForgejoUnauthorized) as caught:
            await c.get_issue(*REPO, 17)
    assert str(caught.value) == (
        "the Forgejo token of type 'dev' was refused (401): check [types.dev] token"
    )
    assert "wrong-secret" not in str(caught.value)
    assert len(forge.requests) == 1
    assert forge.requests[0].user is None


async def test_bad_token_without_label(forge: FakeForgejo) -> None:
    async with ForgejoClient(forge.base_url, "wrong", backoff=0.01) as c:
        with pytest.raises(ForgejoUnauthorized, match="the Forgejo token was refused"):
            await c.comment(*REPO, 17, "x")


async def test_missing_token(forge: FakeForgejo) -> None:
    async with ForgejoClient(forge.base_url, None, label="dev") as c:
        with pytest.raises(ForgejoUnauthorized, match=r"none is configured: set \[types.dev\]"):
            await c.get_pull(*REPO, 18)


async def test_connection_refused(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.DEBUG)
    async with ForgejoClient(f"http://127.0.0.1:{port}", TOKEN, retries=2, backoff=0.01) as c:
        with pytest.raises(ForgejoUnavailable, match=r"after 3 attempts \(last: connection failed"):
            await c.get_pull(*REPO, 18)
        # Nothing reached Forgejo, so even a comment is retried.
        with pytest.raises(ForgejoUnavailable, match="after 3 attempts"):
            await c.comment(*REPO, 17, "x")
    assert TOKEN not in caplog.text


async def test_sends_token_header_and_accepts_api_url() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": 7})

    transport = httpx.MockTransport(answer)
    async with ForgejoClient("https://forge.example.org/api/v1/", "t0k", transport=transport) as c:
        assert await c.comment("o w", "r", 1, "hi") == 7
    assert str(seen[0].url) == "https://forge.example.org/api/v1/repos/o%20w/r/issues/1/comments"
    assert seen[0].headers["Authorization"] == "token t0k"


async def test_non_json_answer_is_reported() -> None:
    """A proxy's HTML login page; the fake always answers JSON, so a MockTransport stands in."""
    transport = httpx.MockTransport(lambda _: httpx.Response(200, text="<html>login</html>"))
    async with ForgejoClient("https://forge.example.org", "t", transport=transport) as c:
        with pytest.raises(ForgejoError, match="unexpected content \\(not JSON\\)"):
            await c.get_pull(*REPO, 1)


def test_rejects_url_without_scheme() -> None:
    with pytest.raises(ForgejoError, match=r"set \[forgejo\] url"):
        ForgejoClient("forge.example.org", "t")
