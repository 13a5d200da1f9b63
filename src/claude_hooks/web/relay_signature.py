"""Requests one node sends to another's API: signed per request, never carrying a credential.

Where another node's API answers (`nodes.url`) is read from the database, and whatever can
write the database can point it anywhere: so nothing a node sends there may be reusable. A
relayed request carries an HMAC-SHA256 signature over its method, the URL it is sent to (the
node's URL, then path and query), the name of the node it is meant for, a timestamp and a
random nonce. The key is derived from `server.api_token`, the secret all nodes share (nodes
come and go, so there is no list of peers to keep), and is never sent. A node accepts a
signature only for itself (its own name and `server.advertise_url`), within WINDOW seconds of
its own clock, and once: what a listener at a forged address receives is good for nothing,
there or anywhere else.

The log relay is the only request between nodes: wake-ups, cancels and other commands travel
through the database (NOTIFY and the signals table), which carries no credential either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

HEADER = "x-claude-hooks-signature"
WINDOW = 30.0  # seconds either side of the receiver's clock (nodes keep time by NTP)
_SCHEME = "v1"
_CONTEXT = b"claude-hooks: node-to-node request signatures, v1"


def relay_key(api_token: str) -> bytes:
    """The signing key of all nodes sharing `api_token`: knowing it does not give the token."""
    return hmac.new(api_token.encode(), _CONTEXT, hashlib.sha256).digest()


def _mac(key: bytes, method: str, url: str, node: str, at: int, nonce: str) -> str:
    message = "\n".join((_SCHEME, method.upper(), url, node, str(at), nonce))
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def sign(key: bytes, method: str, url: str, node: str, now: float | None = None) -> str:
    """The header value for one request of `method` to `url`, meant for node `node`."""
    at = int(time.time() if now is None else now)
    nonce = secrets.token_hex(16)
    mac = _mac(key, method, url, node, at, nonce)
    return f"{_SCHEME} node={node} at={at} nonce={nonce} mac={mac}"


class Verifier:
    """Checks the signatures of requests sent to this node; remembers the nonces it took
    until they expire, so each signed request is taken once."""

    def __init__(
        self,
        key: bytes,
        node: str,
        url: Callable[[], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.node = node
        self.url = url  # this node's advertised URL, as other nodes read it from the database
        self.clock = clock
        self._taken: OrderedDict[str, float] = OrderedDict()  # nonce -> when it expires

    def check(self, method: str, target: str, header: str) -> str | None:
        """None if `header` signs this request (`target`: its path and query as received),
        else what is wrong with it."""
        fields = dict(part.partition("=")[::2] for part in header.split()[1:])
        scheme = header.split(" ", 1)[0]
        try:
            node, nonce, mac = fields["node"], fields["nonce"], fields["mac"]
            at = int(fields["at"])
        except (KeyError, ValueError):
            return f"malformed {HEADER} header"
        if scheme != _SCHEME:
            return f"{HEADER} of an unknown scheme {scheme[:16]!r}: are the nodes one version?"
        if node != self.node:
            return f"the request is signed for node {node[:63]!r}, and this is {self.node!r}"
        now = self.clock()
        if abs(now - at) > WINDOW:
            return (
                f"the request's signature is {abs(now - at):.0f} s off this node's clock "
                f"(at most {WINDOW:g}): check the nodes' clocks (NTP)"
            )
        expected = _mac(self.key, method, self.url() + target, node, at, nonce)
        if not hmac.compare_digest(mac, expected):
            return (
                "the request's signature does not match: do the nodes share one "
                "server.api_token, and is server.advertise_url where this node is reached?"
            )
        while self._taken and next(iter(self._taken.values())) < now:
            self._taken.popitem(last=False)
        if nonce in self._taken:
            return "the signed request was already taken once: a signature is good for one"
        self._taken[nonce] = at + WINDOW
        return None
