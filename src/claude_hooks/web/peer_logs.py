"""Logs of tasks another node runs or ran: relayed from that node's API, which has the file.

A task's log is a file in the data dir of the node that ran it (`tasks.node`). A node asked
for a log it does not have sends the same request to that node's API (`nodes.url`, from its
`server.advertise_url`), marked as relayed so that it is never relayed a second time, and
streams the answer through, a live follow included.

`nodes.url` comes from the database, so the request carries no credential: only a signature
good for this one request to that node (`relay_signature`). What comes back is untrusted text:
read within bounds, shown escaped (the dashboard's templates), never parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from urllib.parse import quote, urlencode

import httpx

from claude_hooks.errors import PeerUnreachableError
from claude_hooks.service.runtime import Service
from claude_hooks.store.base import NodeAddress, Store
from claude_hooks.web.relay_signature import HEADER as SIGNATURE_HEADER
from claude_hooks.web.relay_signature import relay_key, sign

RELAYED = "x-claude-hooks-relayed"
PRUNED_HEADER = "x-log-pruned"  # on an answer that only says the log was pruned
CONNECT_SECONDS = 2.0
READ_SECONDS = 10.0  # for a whole log or a tail; a follow waits as long as the task runs
# The dashboard asks for the tails of all running tasks every second: a node that did not
# answer is not asked again for a while, or each look would wait for its timeouts.
QUIET_SECONDS = 10.0
_silent_until: dict[str, float] = {}  # node URL -> monotonic time
MAX_TAIL_BYTES = 256 * 1024  # of another node's answer to a tail request; the rest is cut
MAX_ERROR_BYTES = 300  # of another node's refusal, quoted in the error


async def home_of(service: Service, task_id: str, relayed: bool = False) -> NodeAddress | None:
    """The other node that has the task's log; None when this node has it (or should)."""
    if relayed:
        return None
    home = await service.store.node_of(task_id)
    return None if home is None or home.name == service.config.server.node else home


async def node_address(store: Store, here: str, name: str | None) -> NodeAddress | None:
    """Node `name`, which has the log of a run it ran; None when it is node `here` (or none)."""
    if name is None or name == here:
        return None
    found = await store.nodes.list_nodes(await store.database_time())
    return NodeAddress(name, next((n.url for n in found if n.name == name), None))


class Relay:
    """An open answer of another node to a log request."""

    def __init__(self, client: httpx.AsyncClient, answer: httpx.Response) -> None:
        self.client = client
        self.answer = answer

    async def chunks(self, closing: asyncio.Event) -> AsyncIterator[bytes]:
        """The answer's bytes as they come, until it ends or this server closes."""
        stream = self.answer.aiter_raw()
        closed = asyncio.ensure_future(closing.wait())
        try:
            while True:
                following = asyncio.ensure_future(anext(stream))
                await asyncio.wait({following, closed}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await following
                    return
                try:
                    yield following.result()
                except StopAsyncIteration:
                    return
        except httpx.HTTPError:
            return  # the other node went away mid-answer: what came is what there is
        finally:
            closed.cancel()
            await self.close()

    async def close(self) -> None:
        await self.answer.aclose()
        await self.client.aclose()


async def open_relay(
    service: Service, home: NodeAddress, task_id: str, params: dict[str, str]
) -> Relay:
    """Ask `home` for the log; PeerUnreachableError (a 502) if it cannot answer."""
    token = service.config.server.api_token
    return await open_peer_log(
        token.get_secret_value() if token is not None else None, home, task_id, params
    )


async def open_peer_log(
    token: str | None, home: NodeAddress, task_id: str, params: dict[str, str]
) -> Relay:
    """`open_relay` for any client holding the API token: the CLI's `tasks log` too."""
    where = f"the log of task {task_id} is on node {home.name}"
    if not home.url:
        raise PeerUnreachableError(
            f"{where}, which has not said where its API answers: set server.advertise_url "
            "on that node (or server.host to an address this node can reach)"
        )
    follow = params.get("follow") == "true"
    url = f"{home.url}/api/tasks/{quote(task_id, safe='')}/log?{urlencode(params)}"
    # Bytes as they were written: a compressed answer could expand without bound.
    headers = {RELAYED: "1", "Accept-Encoding": "identity"}
    if token is not None:
        # A signature for this request only: the node's URL came from the database.
        headers[SIGNATURE_HEADER] = sign(relay_key(token), "GET", url, home.name)
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(None if follow else READ_SECONDS, connect=CONNECT_SECONDS)
    )
    try:
        answer = await client.send(client.build_request("GET", url, headers=headers), stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        raise PeerUnreachableError(
            f"{where} ({home.url}), which did not answer ({exc.__class__.__name__}: {exc}); "
            "try again when it is up"
        ) from None
    if answer.status_code != 200:
        try:
            body = _printable(await read_at_most(answer, MAX_ERROR_BYTES)).strip()
        except httpx.HTTPError:
            body = "(no answer)"
        finally:
            await answer.aclose()
            await client.aclose()
        raise PeerUnreachableError(
            f"{where} ({home.url}), which answered {answer.status_code}: {body} (do the "
            "nodes share one server.api_token, and their clocks the time?)"
        )
    return Relay(client, answer)


async def read_at_most(answer: httpx.Response, limit: int) -> bytes:
    """The first `limit` bytes of an answer: another node's answer is not trusted to end."""
    data = b""
    async for chunk in answer.aiter_raw():
        data += chunk
        if len(data) >= limit:
            break
    return data[:limit]


def _printable(data: bytes) -> str:
    """Bytes of another node as one line of text: control characters become spaces."""
    return "".join(c if c.isprintable() else " " for c in data.decode("utf-8", "replace"))


async def tail(service: Service, home: NodeAddress, task_id: str, count: int) -> list[str]:
    """The last `count` lines of the log at `home`, readable; a line saying why if none."""
    now = time.monotonic()
    if _silent_until.get(home.url or "", 0.0) > now:
        return [f"(the log is on node {home.name}, which did not answer a moment ago)"]
    try:
        relay = await open_relay(service, home, task_id, {"tail": str(count), "format": "text"})
    except PeerUnreachableError as exc:
        _silent_until[home.url or ""] = now + QUIET_SECONDS
        return [f"({exc})"]
    _silent_until.pop(home.url or "", None)
    try:
        data = await read_at_most(relay.answer, MAX_TAIL_BYTES)
    except httpx.HTTPError as exc:
        return [f"(the log of task {task_id} on node {home.name} could not be read: {exc})"]
    finally:
        await relay.close()
    return [_printable(line) for line in data.splitlines()[-count:]]
