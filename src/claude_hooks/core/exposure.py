"""Secrets fit for the address the service listens on: placeholders only on loopback."""

from __future__ import annotations

import ipaddress

from claude_hooks.config import Config

PLACEHOLDER = "change-me"
MIN_SECRET_LENGTH = 16


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or "" (every interface): it may be reachable from outside


def weak_secrets(config: Config) -> list[str]:
    """What is wrong with each secret that is set: a placeholder, or too short to be one."""
    problems = []
    for key, secret in (
        ("server.webhook_secret", config.server.webhook_secret),
        ("server.api_token", config.server.api_token),
    ):
        if secret is None:
            continue
        value = secret.get_secret_value()
        if value.lower().startswith(PLACEHOLDER):
            problems.append(f"{key} is the placeholder {value[: len(PLACEHOLDER)]!r}…")
        elif len(value) < MIN_SECRET_LENGTH:
            problems.append(f"{key} is shorter than {MIN_SECRET_LENGTH} characters")
    return problems
