"""Load generators: wrk with a Lua script for the most a server takes, and an asyncio client
on keep-alive connections for a fixed rate with per-request latency."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.deliveries import Delivery

_LUA = """
local bodies = {}
local headers = {}
%(table)s
local total = #bodies
local counter = 0
function setup(thread)
  thread:set("offset", counter)
  counter = counter + 1
end
function init(args)
  index = offset
end
function request()
  -- threads take turns through the deliveries; past the end they repeat (never for the
  -- service under test: the caller sizes the list to outlast the run)
  local i = (index %% total) + 1
  index = index + %(threads)d
  return wrk.format("POST", "%(path)s", headers[i], bodies[i])
end
function response(status, hdrs, body)
  if status < 200 or status > 299 then
    io.stderr:write("status " .. status .. "\\n")
  end
end
"""


def _lua_string(text: str) -> str:
    level = "=" * 4
    assert f"]{level}]" not in text
    return f"[{level}[{text}]{level}]"


def wrk_script(deliveries: Sequence[Delivery], path: str, threads: int, folder: Path) -> Path:
    lines = []
    for index, delivery in enumerate(deliveries, start=1):
        lines.append(f"bodies[{index}] = {_lua_string(delivery.body.decode())}")
        pairs = ", ".join(f'["{k}"] = "{v}"' for k, v in delivery.headers.items())
        lines.append(f"headers[{index}] = {{{pairs}}}")
    script = folder / "deliveries.lua"
    script.write_text(_LUA % {"table": "\n".join(lines), "threads": threads, "path": path})
    return script


@dataclass
class Throughput:
    requests: int
    seconds: float
    per_second: float
    errors: int


def run_wrk(url: str, script: Path, connections: int, threads: int, seconds: int) -> Throughput:
    result = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    out = result.stdout
    match = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    assert match, out
    requests = int(match.group(1))
    elapsed = float(match.group(2)) / (1000 if match.group(3) == "ms" else 1)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    errors += result.stderr.count("status ")
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return Throughput(requests, elapsed, requests / elapsed, errors)


@dataclass
class Latencies:
    seconds: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    bodies: list[bytes] = field(default_factory=list)


def _request_bytes(host: str, path: str, delivery: Delivery) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(delivery.body)}"]
    head += [f"{k}: {v}" for k, v in delivery.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + delivery.body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    writer.write(request)
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def fixed_rate(
    host: str,
    port: int,
    path: str,
    deliveries: Sequence[Delivery],
    rate: float,
    connections: int = 32,
    keep_bodies: bool = False,
) -> Latencies:
    """Send at `rate` per second; latency counts from each request's scheduled time, so a
    stalled server is not hidden by the client waiting (no coordinated omission). One loop
    starts each request when it is due: making all the tasks at once took this client tens of
    milliseconds, which the first requests' latencies then counted as the server's."""
    result = Latencies()
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))

    async def one(scheduled: float, delivery: Delivery) -> None:
        reader, writer = await pool.get()
        status, body = await _exchange(reader, writer, _request_bytes(host, path, delivery))
        result.seconds.append(time.perf_counter() - scheduled)
        result.statuses[status] += 1
        if keep_bodies:
            result.bodies.append(body)
        pool.put_nowait((reader, writer))

    start = time.perf_counter()
    started: list[asyncio.Task[None]] = []
    for index, delivery in enumerate(deliveries):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        started.append(asyncio.create_task(one(scheduled, delivery)))
    await asyncio.gather(*started)
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
        await writer.wait_closed()
    return result
