"""What the forge's names may look like: delivery ids, owners and repositories.

These strings come from the unsigned headers or from bodies that name paths, URLs and log
lines, so each is checked against the forge's own rules before anything uses it. Forgejo's
rules: owners of ASCII letters, digits, `-`, `_` and `.`, not starting or ending with a dot,
up to 40 characters; repositories of the same characters (a leading dot allowed, as in an
organisation's `.profile` or `.claude-hooks`; a trailing one is refused, as Forgejo's own
checks of paths do), up to 100, never `.`, `..` or `-`, no run of dots, and not ending in
`.git`, `.wiki`, `.rss` or `.atom`. No name may contain `..`, so no
name can climb a path.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

DELIVERY_ID_RULE = "a UUID, or 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit"
_DELIVERY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NAME = re.compile(r"[A-Za-z0-9_-](?:[A-Za-z0-9_.-]*[A-Za-z0-9_-])?")
_REPO_NAME = re.compile(r"[A-Za-z0-9_.-]*[A-Za-z0-9_-]")
_RESERVED_REPOS = frozenset({".", "..", "-"})
_RESERVED_REPO_ENDINGS = (".git", ".wiki", ".rss", ".atom")
OWNER_MAX = 40
REPO_MAX = 100


def valid_delivery_id(value: str) -> bool:
    """A UUID (Forgejo's form) or a short id of the safe alphabet: never a path or a query."""
    return _DELIVERY_ID.fullmatch(value) is not None


def name_problem(value: str, limit: int) -> str | None:
    """Why `value` is not a valid owner or repository name, or None if it is."""
    if not value:
        return "is empty"
    if len(value) > limit:
        return f"is longer than {limit} characters"
    if _NAME.fullmatch(value) is None:
        return (
            "may hold only ASCII letters, digits, '-', '_' and '.', "
            "and may not start or end with '.'"
        )
    if ".." in value:
        return "may not contain '..'"
    return None


def repo_name_problem(value: str) -> str | None:
    """Why `value` is not a valid repository name, or None if it is."""
    if not value:
        return "is empty"
    if len(value) > REPO_MAX:
        return f"is longer than {REPO_MAX} characters"
    if ".." in value or value in _RESERVED_REPOS:
        return "may not be '.', '..' or '-', nor contain '..'"
    if _REPO_NAME.fullmatch(value) is None:
        return "may hold only ASCII letters, digits, '-', '_' and '.', and may not end with '.'"
    if value.lower().endswith(_RESERVED_REPO_ENDINGS):
        return "may not end in '.git', '.wiki', '.rss' or '.atom'"
    return None


def full_name_problem(full_name: str) -> str | None:
    """Why `full_name` is not `<owner>/<repository>` by the forge's rules, or None."""
    owner, slash, repo = full_name.partition("/")
    if not slash:
        return "must be '<owner>/<repository>'"
    problem = name_problem(owner, OWNER_MAX)
    if problem is not None:
        return f"owner {owner[:60]!r} {problem}"
    problem = repo_name_problem(repo)
    if problem is not None:
        return f"repository {repo[:110]!r} {problem}"
    return None


def _checked_full_name(value: str) -> str:
    problem = full_name_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


FullName = Annotated[str, AfterValidator(_checked_full_name)]
"""A model field holding `<owner>/<repository>` by the forge's rules."""
