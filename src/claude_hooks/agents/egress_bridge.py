"""Runs inside an agent's sandbox, first: `python -I -S egress_bridge.py SOCKET PORT -- ARGV…`.

The sandbox has its own network namespace, with nothing but its loopback. This listens on
127.0.0.1:PORT there and forwards each connection to SOCKET, the Unix socket of the service's
egress proxy bound into the sandbox; then it execs ARGV, the agent, in its own process. It binds
before the agent starts, so the agent's first request finds it listening; the forwarder is a
detached grandchild (not a child the agent could wait for), and it ends with the sandbox's PID
namespace. Standard library only: it runs with `-I -S` and sees nothing of the service.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading

MAX_CONNECTIONS = 128  # beyond these at once, a connection is closed at once
_CHUNK = 65536


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(_CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            with contextlib.suppress(OSError):
                end.shutdown(how)


def _relay(client: socket.socket, path: str, slots: threading.BoundedSemaphore) -> None:
    try:
        with client, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
            try:
                upstream.connect(path)
            except OSError:
                return
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join()
    finally:
        slots.release()


def _serve(listener: socket.socket, path: str) -> None:
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
    while True:
        client, _ = listener.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not slots.acquire(blocking=False):
            client.close()
            continue
        threading.Thread(target=_relay, args=(client, path, slots), daemon=True).start()


def main(args: list[str]) -> None:
    path, port, separator, *argv = args
    if separator != "--" or not argv:
        sys.exit("usage: egress_bridge.py SOCKET PORT -- PROGRAM [ARGS…]")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(port)))
    listener.listen(64)
    child = os.fork()
    if child == 0:
        if os.fork() != 0:
            os._exit(0)  # the grandchild serves, a child of the namespace's init
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)  # never hold the agent's output pipes open
        try:
            _serve(listener, path)
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    listener.close()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"claude-hooks: cannot run {argv[0]!r}: {exc.strerror}\n")
        sys.exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
