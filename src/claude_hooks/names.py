"""The rule for the names of types, instances and nodes: one place, read by the configuration
and by every command that takes a name."""

from __future__ import annotations

import re

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
NAME_RULE = "1-63 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"


def valid_name(name: str) -> bool:
    return bool(NAME_PATTERN.match(name))
