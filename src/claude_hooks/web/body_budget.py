"""The bytes held for webhook bodies whose signature is not checked yet, across all requests.

Such a body is a stranger's until its last byte proves the signature, yet it must be held to be
checked. Each request takes its bytes from one budget (`server.max_pending_body_bytes`) as they
arrive and gives them back when it is answered; a request that would overdraw it is answered
503 at once, so many slow senders of large bodies cannot grow the process without bound.
"""

from __future__ import annotations


class BodyBudget:
    """The bytes of bodies in flight (read, not yet checked), against `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Hold `size` more bytes, or False (and hold nothing) if the budget would be exceeded."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size
