"""`claude-hooks serve`: check the settings, take the data dir, run the service under uvicorn."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from claude_hooks.agents import resources
from claude_hooks.config import Config
from claude_hooks.core.exposure import is_loopback, weak_secrets
from claude_hooks.errors import ConfigError
from claude_hooks.log_format import configure_logging
from claude_hooks.service.runtime import Service
from claude_hooks.web.app import create_app
from claude_hooks.web.edge import edge_protocol

log = logging.getLogger("claude_hooks")


class AppServer(uvicorn.Server):
    """uvicorn serving our app; it tells the app first that it is stopping, so live streams
    (the dashboard's, a followed log) end at once instead of holding the shutdown up."""

    def __init__(self, app: FastAPI, **options: Any) -> None:
        # log_config=None: uvicorn's records go to our handlers, in our format.
        super().__init__(uvicorn.Config(app, lifespan="off", log_config=None, **options))
        # The loop's default handler logs a traceback per failed accept(): one line will do.
        asyncio.get_running_loop().set_exception_handler(resources.loop_exception_handler)
        self.closing: asyncio.Event = app.state.closing

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.closing.set()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn records the signal and raises it again once it has stopped, which would end
        # the process before the service stops its agents and hands their tasks back to their
        # queues. Stop the same way, without the second signal.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def check_startup(config: Config, insecure_no_signature: bool) -> None:
    """Refuse settings that would leave the service open; one line says which key to set."""
    if config.server.webhook_secret is None and not insecure_no_signature:
        raise ConfigError(
            "server.webhook_secret is not set: set it (or CLAUDE_HOOKS_SERVER__WEBHOOK_SECRET) "
            "to the webhook's secret, or pass --insecure-no-signature for a local trial"
        )
    if config.server.api_token is None:
        raise ConfigError(
            "server.api_token is not set: set it (or CLAUDE_HOOKS_SERVER__API_TOKEN) to a long "
            "random string; the API and dashboard require it as a Bearer token"
        )
    weak = weak_secrets(config)
    if weak and not is_loopback(config.server.host):
        raise ConfigError(
            f"{'; '.join(weak)}: serve refuses such secrets on {config.server.host!r}, which is "
            "not a loopback address; set long random ones (as 'claude-hooks init' writes)"
        )


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # an answer's second write (the body after the headers) waited for the client's delayed
    # ACK, about 40 ms, at every request of a busy connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    return sock


def run_server(
    config: Config, insecure_no_signature: bool = False, problems: Sequence[str] = ()
) -> None:
    """`problems`: what `doctor` found failing that does not stop the service, logged first."""
    check_startup(config, insecure_no_signature)
    configure_logging(config.server.log_level)
    for problem in problems:
        log.warning("doctor: %s (see 'claude-hooks doctor')", problem)
    if insecure_no_signature and config.server.webhook_secret is None:
        log.warning(
            "webhook signatures are NOT checked (--insecure-no-signature): "
            "anyone who can reach this port can queue agent work"
        )
    sock = bind(config.server.host, config.server.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}"
    try:
        # Not uvloop: measured here, its subprocess pipes delayed every agent's start by ~110 ms.
        asyncio.run(_serve(config, sock, url, insecure_no_signature))
    finally:
        sock.close()


def _freeze_startup_objects() -> None:
    """Keep what start-up made (modules, settings, the app: ~140,000 objects) out of the
    collector's full passes, which scanned them all and held every answer up by ~50 ms."""
    gc.collect()
    gc.freeze()


async def _serve(config: Config, sock: socket.socket, url: str, insecure: bool) -> None:
    service = await Service.open(config, insecure_no_signature=insecure)
    try:
        await service.start(url)
        server = AppServer(
            create_app(service),
            log_level=config.server.log_level,
            access_log=False,
            timeout_graceful_shutdown=5,
            http=edge_protocol(config.server.read_timeout, config.server.max_connections),
        )
        log.info(
            "claude-hooks listening on %s as node %s; instances here: %s",
            url,
            service.node.name,
            ", ".join(sorted(service.pool.workers)) or "none",
        )
        _freeze_startup_objects()
        await server.serve(sockets=[sock])
    finally:
        await service.stop()
