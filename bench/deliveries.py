"""Signed "issue assigned" deliveries of about 8 KB, each for a distinct issue."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass

from bench.common import SECRET


@dataclass(frozen=True)
class Delivery:
    body: bytes
    headers: dict[str, str]


def _user(login: str, number: int) -> dict[str, object]:
    return {
        "id": number,
        "login": login,
        "login_name": "",
        "source_id": 0,
        "full_name": login.title(),
        "email": f"{login}@example.org",
        "avatar_url": f"https://forge.example.org/avatars/{number}",
        "html_url": f"https://forge.example.org/{login}",
        "language": "",
        "is_admin": False,
        "restricted": False,
        "active": True,
        "prohibit_login": False,
        "location": "",
        "website": "",
        "description": "",
        "visibility": "public",
        "followers_count": 0,
        "following_count": 0,
        "starred_repos_count": 0,
        "username": login,
    }


def issue_assigned(number: int, size: int = 8192, delivery_id: str | None = None) -> Delivery:
    repository = {
        "id": 42,
        "owner": _user("acme", 3),
        "name": "widget",
        "full_name": "acme/widget",
        "description": "A widget",
        "empty": False,
        "private": False,
        "fork": False,
        "html_url": "https://forge.example.org/acme/widget",
        "default_branch": "main",
    }
    payload = {
        "action": "assigned",
        "number": number,
        "issue": {
            "id": 1000 + number,
            "number": number,
            "user": _user("alice", 5),
            "title": f"Issue {number}: retry failed deliveries",
            "body": "",
            "labels": [],
            "milestone": None,
            "assignee": _user("dev-bot", 12),
            "assignees": [_user("dev-bot", 12)],
            "state": "open",
            "is_locked": False,
            "comments": 0,
            "html_url": f"https://forge.example.org/acme/widget/issues/{number}",
            "pull_request": None,
            "repository": {"id": 42, "name": "widget", "owner": "acme", "full_name": "acme/widget"},
        },
        "repository": repository,
        "sender": _user("alice", 5),
    }
    text = json.dumps(payload, indent=2)
    filler = max(0, size - len(text) - 10)
    payload["issue"]["body"] = "Steps to reproduce. " * (filler // 20)  # type: ignore[index]
    body = json.dumps(payload, indent=2).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    ident = delivery_id or f"bench-{number:08d}"
    headers = {
        "Content-Type": "application/json",
        "X-Forgejo-Delivery": ident,
        "X-Forgejo-Event": "issues",
        "X-Forgejo-Event-Type": "issue_assign",
        "X-Forgejo-Signature": signature,
    }
    return Delivery(body, headers)
