"""7. Egress proxy overhead: what a Messages API call pays for going through the service.

The same client (standard library, one kept-alive connection, a streamed `POST /v1/messages`)
calls the local stand-in of the Messages API twice over: directly, from the host, and from
inside an agent's sandbox, through 127.0.0.1:3128 there (the listener the service opened in it;
without root, its bridge and the run's Unix socket) and the service's relay (token check,
credential swap, metering). The difference of the medians is the overhead the goal (<= 2 ms
p50) is about. The stand-in runs in its own process with Nagle's
algorithm off, as a real API server's would be: in the proxy's process its threads take the
GIL from the proxy's loop, and with Nagle on its small writes meet httpx's delayed ACKs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from bench.common import ROOT, percentile, stats
from claude_hooks.agents import sandbox
from claude_hooks.agents.egress import EgressProxy, EgressSession
from claude_hooks.agents.sandbox_latch import Latch, Listen
from claude_hooks.config import TypeConfig

T = TypeVar("T")

# Runs with `python -I -S`, in the sandbox or not: N timed calls on one connection.
CLIENT = r"""
import http.client, json, sys, time
host, port, key, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
                   "messages": [{"role": "user", "content": "Say hello"}]}).encode()
headers = {"content-type": "application/json", "x-api-key": key,
           "anthropic-version": "2023-06-01"}
connection = http.client.HTTPConnection(host, port, timeout=30)
times = []
for _ in range(count):
    started = time.perf_counter()
    connection.request("POST", "/v1/messages", body, headers)
    answer = connection.getresponse()
    answer.read()
    assert answer.status == 200, answer.status
    times.append((time.perf_counter() - started) * 1000)
print(json.dumps(times))
"""


# The stand-in in a process of its own, as the real API is: in the proxy's process its threads
# would take the GIL from the proxy's loop (measured: 16 ms added per call, all of it that).
STANDIN = """
import sys, time
from tests.messages_standin import MessagesStandin
with MessagesStandin(keep_alive=True) as api:
    api._server.RequestHandlerClass.disable_nagle_algorithm = True
    print(api.url, flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def _standin() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", STANDIN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert process.stdout is not None
    assert process.stdin is not None
    try:
        yield process.stdout.readline().strip()
    finally:
        process.stdin.close()
        process.wait(10)


class _Loop:
    """The proxy's event loop in a thread, as the service's would be."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _calls(
    argv: list[str],
    env: dict[str, str],
    pass_fds: tuple[int, ...] = (),
    started: Callable[[], None] | None = None,
) -> list[float]:
    """The client's timings. In a session of its own either way, as the CLI always is (the
    launcher's setsid, bwrap's --new-session): the kernel's autogroup scheduling gives each
    session its own share, which on a loaded machine slows every wake-up across sessions
    (measured on 2 cores at load 12: the same calls through bridge and proxy, 3 ms from the
    proxy's session, 5-12 ms from a new one). `started`: called once it runs (a sandbox's
    bwrap waits at its latch until then)."""
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        pass_fds=pass_fds,
    )
    if started is not None:
        started()
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    times: list[float] = json.loads(out.strip().splitlines()[-1])
    return times[len(times) // 10 :]  # the first calls open connections: not the steady state


def _let_in(loop: _Loop, latch: Latch, listen: Listen | None) -> None:
    """Let the sandbox bwrap waits to build start: into its egress listener, if it gets one."""
    latch.spawned()
    loop.run(latch.admit(None, listen))


def run(quick: bool) -> dict[str, Any]:
    count = 30 if quick else 400
    rounds = 1 if quick else 3
    box = sandbox.build(sandbox.find_bwrap(), "claude-hooks-agent", [])
    loop = _Loop()
    proxy = EgressProxy()
    direct: list[float] = []
    proxied: list[float] = []
    medians = []
    try:
        with _standin() as url, tempfile.TemporaryDirectory() as scratch:
            workdir = Path(scratch)
            (workdir / "client.py").write_text(CLIENT)
            box.give(workdir)
            env = {"ANTHROPIC_API_KEY": "sk-standin", "ANTHROPIC_BASE_URL": url}
            config = TypeConfig(runner="claude", env=env)
            host, port = url.removeprefix("http://").split(":")
            for _ in range(rounds):
                session: EgressSession = loop.run(
                    proxy.open("bench", "dev", config, env, box.account)
                )
                inside = session.environment({"PATH": "/usr/bin:/bin"})
                token = inside["ANTHROPIC_API_KEY"]
                client = [sys.executable, "-I", "-S", str(workdir / "client.py")]
                here = _calls([*client, host, port, "sk-standin", str(count)], {})
                latch = Latch.pipes()
                listen = session.serve if box.listens_inside else None
                try:
                    there = _calls(
                        box.wrap(
                            [*client, "127.0.0.1", str(sandbox.BRIDGE_PORT), token, str(count)],
                            workdir,
                            # The interpreter may live under a folder the sandbox masks (a
                            # clone in /tmp): bring it, as the command runner does an agent's.
                            readable=[Path(sys.executable)],
                            bridge=session.socket,
                            latch=latch.args(),
                        ),
                        inside,
                        latch.child_fds,
                        functools.partial(_let_in, loop, latch, listen),
                    )
                finally:
                    latch.close()
                metered = session.metered()
                loop.run(session.close())
                assert metered is not None
                assert metered["requests"] == count
                direct += here
                proxied += there
                medians.append(percentile(there, 0.5) - percentile(here, 0.5))
    finally:
        loop.run(proxy.aclose())
        loop.close()
    return {
        "calls": len(proxied),
        "direct_p50_ms": percentile(direct, 0.5),
        "proxied_p50_ms": percentile(proxied, 0.5),
        "proxied_p99_ms": percentile(proxied, 0.99),
        "added_p50_ms": stats(medians),
    }
