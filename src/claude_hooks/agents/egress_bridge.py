"""Runs inside an agent's sandbox, first: `python -I -S egress_bridge.py SOCKET PORT -- ARGV…`.

The sandbox has its own network namespace, with nothing but its loopback. This listens on
127.0.0.1:PORT there and forwards each connection to SOCKET, the Unix socket of the service's
egress proxy bound into the sandbox; then it execs ARGV, the agent, in its own process. It binds
before the agent starts, so the agent's first request finds it listening; the forwarder is a
detached grandchild (not a child the agent could wait for), and it ends with the sandbox's PID
namespace. It runs with `-I -S` and sees nothing of the service.

It uses the interpreter's C modules `_socket` and `_thread`, not `socket` and `threading`: it
runs before every sandboxed agent, and importing `socket` (its enum conversions) took 50 ms of
the 100 ms this script took to start on a loaded machine; `_socket` and `_thread` take 1 ms.
"""

from __future__ import annotations

import _socket
import _thread
import os
import sys

MAX_CONNECTIONS = 128  # beyond these at once, a connection is closed at once
_CHUNK = 65536


class _Slots:
    """A count of connections that may still open."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.lock = _thread.allocate_lock()

    def take(self) -> bool:
        with self.lock:
            if self.free == 0:
                return False
            self.free -= 1
            return True

    def give(self) -> None:
        with self.lock:
            self.free += 1


def _pump(source: _socket.socket, sink: _socket.socket, done: _thread.LockType | None) -> None:
    try:
        while data := source.recv(_CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    for end, how in ((sink, _socket.SHUT_WR), (source, _socket.SHUT_RD)):
        try:  # noqa: SIM105 (contextlib: an import this script saves, see above)
            end.shutdown(how)
        except OSError:
            pass
    if done is not None:
        done.release()


def _relay(fd: int, path: str, slots: _Slots) -> None:
    client = _socket.socket(fileno=fd)
    client.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    upstream = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        upstream.connect(path)
        back = _thread.allocate_lock()
        back.acquire()
        _thread.start_new_thread(_pump, (upstream, client, back))
        _pump(client, upstream, None)
        back.acquire()  # the answer has been passed on too
    except OSError:
        pass
    finally:
        client.close()
        upstream.close()
        slots.give()


def _serve(listener: _socket.socket, path: str) -> None:
    slots = _Slots(MAX_CONNECTIONS)
    while True:
        fd, _ = listener._accept()  # type: ignore[attr-defined]  # the C method socket.accept wraps
        if not slots.take():
            os.close(fd)
            continue
        _thread.start_new_thread(_relay, (fd, path, slots))


def main(args: list[str]) -> None:
    path, port, separator, *argv = args
    if separator != "--" or not argv:
        sys.exit("usage: egress_bridge.py SOCKET PORT -- PROGRAM [ARGS…]")
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
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
