"""Which hosts a sandboxed agent may reach through the service's egress proxy: a pure rule.

A type lists its hosts (`[types.<t>] egress`): a name or an IP literal, with a port or, without
one, ports 80 and 443. Nothing else is reachable: no wildcards, no default. Names are matched
before any lookup, so a refused name is never resolved. A listed name must then resolve to
public addresses only: loopback, private, link-local and other special addresses (the database,
the service, other nodes, a cloud's metadata service) are reachable only through an entry naming
that address itself, so a name pointed at 127.0.0.1 (DNS rebinding) opens nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from claude_hooks.config import EgressEntry, parse_egress

DEFAULT_PORTS = (80, 443)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def special(address: IPAddress) -> bool:
    """Not a public address: loopback, private, link-local, reserved, multicast, unspecified."""
    mapped = getattr(address, "ipv4_mapped", None)
    return not (mapped or address).is_global


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    entries: tuple[EgressEntry, ...] = ()

    @classmethod
    def of(cls, entries: Iterable[str]) -> EgressPolicy:
        return cls(tuple(parse_egress(entry) for entry in entries))

    def listed(self, host: str, port: int) -> bool:
        """The host and port are on the list (before any lookup)."""
        host = normalize(host)
        return any(
            entry.host == host
            and (port == entry.port or (entry.port is None and port in DEFAULT_PORTS))
            for entry in self.entries
        )

    def reachable(self, host: str, port: int, addresses: Sequence[IPAddress]) -> list[IPAddress]:
        """Of a listed host's resolved `addresses`, those it may be connected to: public ones,
        and special ones only when that address itself is listed for the port."""
        return [
            address
            for address in addresses
            if not special(address) or self.listed(str(address), port)
        ]


def normalize(host: str) -> str:
    """Lower case, no trailing dot, IPv6 without brackets and in its short form."""
    host = host.strip().lower().rstrip(".")
    literal = _literal(host)
    return str(literal) if literal is not None else host
