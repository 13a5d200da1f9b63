"""`claude-hooks doctor`: check a configuration against the machine and the forge.

Each check says what it found and, when it fails, what to change; the service would hit the
same problems later, one task at a time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy.engine import make_url

from claude_hooks.agents import cages
from claude_hooks.agents.claude_cli import locate_cli
from claude_hooks.agents.credentials import HOW_TO, claude_credential
from claude_hooks.agents.prompting import Prompts
from claude_hooks.agents.sandbox import (
    INSTALL_HINT,
    Sandbox,
    SandboxError,
    account_name,
    find_bwrap,
    probe,
)
from claude_hooks.config import Config, size_bytes
from claude_hooks.core.exposure import is_loopback, weak_secrets
from claude_hooks.errors import ClaudeHooksError, NoDatabaseYet
from claude_hooks.forge.gateway import Forge
from claude_hooks.service.lockfile import running_service
from claude_hooks.store.sql import SqlStore, Timeouts

# How long `serve` waits for the forge's answers at start: a down forge delays it no longer.
STARTUP_FORGE_SECONDS = 5.0
PG_CHECK_TIMEOUT = 5  # seconds: a database that does not answer is already reported


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    subject: str
    detail: str
    warning: bool = False  # worth knowing, not a failure
    fatal: bool = False  # failing, it cannot work whatever the forge's state: serve refuses it


def _executable(name: str) -> str | None:
    if os.sep in name:
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name)


async def run_checks(config: Config) -> AsyncIterator[Check]:
    server = config.server
    yield Check(True, "configuration", str(config.source))
    yield Check(
        server.webhook_secret is not None,
        "server.webhook_secret",
        "set" if server.webhook_secret else "not set: serve refuses to start without it",
    )
    yield Check(
        server.api_token is not None,
        "server.api_token",
        "set" if server.api_token else "not set: serve refuses to start without it",
    )
    exposed = not is_loopback(server.host)
    for problem in weak_secrets(config):
        yield Check(
            not exposed,
            "secrets",
            f"{problem}: serve refuses it on {server.host!r}"
            if exposed
            else f"{problem}: fine on {server.host}, refused on any other address",
            warning=True,
        )
    database = config.sqlite_file
    if database is not None and not database.exists():
        yield Check(
            True,
            "database",
            f"none yet at {database}: 'claude-hooks serve' creates it",
            warning=True,
        )
        async for check in _machine_checks(config):
            yield check
        return
    try:
        store = await SqlStore.open(config.database_url, Timeouts.of(config.server), create=False)
    except NoDatabaseYet as exc:
        yield Check(True, "database", str(exc), warning=True)
        async for check in _machine_checks(config):
            yield check
        return
    except ClaudeHooksError as exc:
        yield Check(False, "database", str(exc))
        return
    try:
        agents = await store.list_agents()
        yield Check(True, "database", f"{config.database_url} (migrated, {len(agents)} agents)")
        auth = await _database_auth_check(config)
        if auth is not None:
            yield auth
        for agent in agents:
            if agent.type not in config.types:
                yield Check(
                    False,
                    f"agent {agent.name}",
                    f"type {agent.type!r} has no [types.{agent.type}] table",
                )
        seeded = {seed.type for seed in config.agents} | {a.type for a in agents}
        for name in sorted(set(config.types) - seeded):
            yield Check(
                True, f"type {name}", "has no instance: add one with 'agents add'", warning=True
            )
    finally:
        await store.close()
    async for check in _machine_checks(config):
        yield check


async def _machine_checks(config: Config) -> AsyncIterator[Check]:
    service = running_service(config.data_dir)
    yield Check(
        True,
        "service",
        f"running (pid {service.pid}, {service.url})" if service else "not running",
        warning=service is None,
    )
    for check in _runner_checks(config):
        yield check
    started = await asyncio.to_thread(_sandbox_start, config)
    if started is not None:
        yield started
    async for check in _forge_checks(config):
        yield check


def _sandbox_start(config: Config) -> Check | None:
    """Whether bubblewrap starts a sandbox here: installed is not enough where a container's
    confinement refuses its namespaces, which `serve` then refuses (doctor only: serve probes
    on its own)."""
    sandboxed = sorted(n for n, t in config.types.items() if t.sandbox and t.runner != "merge")
    bwrap = find_bwrap()
    if not sandboxed or bwrap is None:
        return None
    try:
        probe(Sandbox(bwrap, None))
    except SandboxError as exc:
        return Check(
            False,
            "sandbox start",
            f"{exc}; serve refuses to start so: lift it, or set sandbox = false for "
            f"{', '.join(sandboxed)} to run them unconfined",
        )
    return Check(True, "sandbox start", "bubblewrap creates the agents' namespaces here")


def _runner_checks(config: Config) -> list[Check]:
    checks = []
    claude_cli: str | None = None
    for name, type_config in sorted(config.types.items()):
        subject = f"types.{name}"
        if type_config.runner == "command":
            found = _executable(type_config.command[0])
            checks.append(
                Check(
                    found is not None,
                    subject,
                    f"command {type_config.command[0]!r} "
                    + (f"found at {found}" if found else "not found on PATH"),
                )
            )
        elif type_config.runner == "claude":
            claude_cli = claude_cli or locate_cli()
            checks.append(
                Check(
                    claude_cli is not None,
                    subject,
                    f"Claude Code CLI {claude_cli}"
                    if claude_cli
                    else "Claude Code CLI not found (reinstall claude-agent-sdk)",
                )
            )
            try:
                Prompts.for_type(type_config).check()
            except ClaudeHooksError as exc:
                checks.append(Check(False, f"{subject}.prompts", str(exc)))
        elif type_config.runner == "merge" and not config.forgejo.url:
            checks.append(Check(False, subject, "the merge runner needs [forgejo] url", fatal=True))
        if type_config.workdir == "worktree" and not (
            config.forgejo.clone_url or config.forgejo.url
        ):
            checks.append(
                Check(
                    False,
                    subject,
                    "workdir = 'worktree' needs [forgejo] url (or workdir = 'none' to try "
                    "without a forge)",
                    fatal=True,
                )
            )
    sandboxed = sorted(n for n, t in config.types.items() if t.sandbox and t.runner != "merge")
    if sandboxed:
        bwrap = find_bwrap()
        checks.append(
            Check(
                bwrap is not None,
                "sandbox",
                f"bubblewrap {bwrap} for {', '.join(sandboxed)}"
                if bwrap
                else f"bubblewrap (bwrap) not found: {INSTALL_HINT}, or set sandbox = false "
                f"for {', '.join(sandboxed)}",
            )
        )
    for name in sandboxed:
        checks.append(Check(True, f"types.{name}.egress", _egress(config.types[name].egress)))
    for name, type_config in sorted(config.types.items()):
        if type_config.egress and not type_config.sandbox:
            detail = "ignored: with sandbox = false the agents use the host's network"
            checks.append(Check(True, f"types.{name}.egress", detail, warning=True))
    if config.data_dir.exists() and not os.access(config.data_dir, os.W_OK):
        checks.append(Check(False, "server.data_dir", f"{config.data_dir} is not writable"))
    checks += _limit_checks(config)
    for name, type_config in sorted(config.types.items()):
        if type_config.runner == "claude":
            credential = claude_credential(name, type_config)
            checks.append(
                Check(
                    credential is not None,
                    f"types.{name} credentials",
                    f"{credential.what} from {credential.source}"
                    if credential
                    else f"none: {HOW_TO}",
                    fatal=True,
                )
            )
    return checks


def _egress(entries: list[str]) -> str:
    """What a sandboxed type's agents can reach besides the service: its egress list."""
    if not entries:
        return "no host (the agents reach nothing but the service's proxy)"
    return "the agents may reach " + ", ".join(entries) + " (through the service's proxy)"


def startup_checks(config: Config) -> list[Check]:
    """What `serve` checks before it starts, without the network: a fatal one refuses."""
    return _runner_checks(config)


async def startup_forge_checks(config: Config) -> list[Check]:
    """The forge's checks within STARTUP_FORGE_SECONDS. A forge that does not answer is a
    warning, never fatal: an outage must never keep the service from restarting."""
    checks: list[Check] = []
    try:
        async with asyncio.timeout(STARTUP_FORGE_SECONDS):
            async for check in _forge_checks(config):
                checks.append(check)
    except TimeoutError:
        checks.append(
            Check(
                False,
                "forgejo",
                f"{config.forgejo.url} did not answer within {STARTUP_FORGE_SECONDS:g} s",
                warning=True,
            )
        )
    return checks


def _limit_checks(config: Config) -> list[Check]:
    """What an agent can consume: each type's limits, how this host enforces them, and the
    free disk below which no agent starts."""
    checks = [
        Check(
            True,
            f"types.{name} limits",
            f"max_processes {t.max_processes}, max_memory {t.max_memory}, max_disk {t.max_disk}",
        )
        for name, t in sorted(config.types.items())
        if t.runner != "merge"
    ]
    confinement = cages.detect(prepare=False)
    checks.append(
        Check(
            True,
            "agent limits",
            confinement.describe()
            + (
                ": run as the systemd unit (Delegate=yes) or as root for cgroups"
                if confinement.kind == "rlimits"
                else ""
            ),
            warning=confinement.kind == "rlimits",
        )
    )
    if os.geteuid() == 0:
        accounts = (
            f"one per instance, {account_name(config.server.sandbox_user, 'INSTANCE')} "
            "(created at its first run): no instance reads or signals another's"
        )
    else:
        accounts = (
            "the service's own user for every instance (not root): their processes share one "
            "RLIMIT_NPROC" + ("" if confinement.kind != "rlimits" else ", and no cgroup parts them")
        )
    checks.append(
        Check(
            True,
            "agent accounts",
            accounts,
            warning=os.geteuid() != 0 and confinement.kind == "rlimits",
        )
    )
    folder = config.data_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = cages.free_disk(folder)
    low = free < size_bytes(config.server.min_free_disk)
    checks.append(
        Check(
            True,
            "server.min_free_disk",
            f"{free / (1 << 30):.1f}G free on the data dir's filesystem"
            + (
                f": below {config.server.min_free_disk}, no agent starts"
                if low
                else f" (agents start above {config.server.min_free_disk})"
            ),
            warning=low,
        )
    )
    return checks


async def _database_auth_check(config: Config) -> Check | None:
    """A PostgreSQL that lets this host in without a password lets every local process in,
    unconfined agents among them (sandboxed ones have a network of their own): a warning."""
    url = make_url(config.database_url)
    if not url.drivername.startswith("postgresql"):
        return None
    import psycopg  # only here: `serve` on SQLite does not load the driver

    bare = url.set(drivername="postgresql", password=None, query={})
    conninfo = bare.render_as_string(hide_password=False)
    with tempfile.TemporaryDirectory() as empty:
        try:
            # passfile: a ~/.pgpass of this user must not supply what the check is about
            # (a missing file is passed over in silence).
            connection = await psycopg.AsyncConnection.connect(
                conninfo, connect_timeout=PG_CHECK_TIMEOUT, passfile=f"{empty}/none"
            )
        except psycopg.Error:
            return Check(True, "database auth", "PostgreSQL asks for a password")
    await connection.close()
    return Check(
        True,
        "database auth",
        f"PostgreSQL lets {bare.username or 'a user'}@{bare.host or 'its socket'} in without "
        "a password: any local process, unsandboxed agents included, can use the database; require "
        "scram-sha-256 for it in pg_hba.conf",
        warning=True,
    )


async def _forge_checks(config: Config) -> AsyncIterator[Check]:
    if not config.forgejo.url:
        yield Check(
            True, "forgejo.url", "not set: no permission checks, comments or merges", warning=True
        )
        return
    forge = Forge(config)
    try:
        for name, type_config in sorted(config.types.items()):
            if type_config.token is None:
                yield Check(
                    False,
                    f"types.{name}.token",
                    "not set: its agents cannot use the forge and comments fail",
                )
                continue
            try:
                login = await forge.client(name).whoami()
            except ClaudeHooksError as exc:
                yield Check(False, f"types.{name}.token", str(exc))
                continue
            expected = config.login_of(name)
            yield Check(
                login.lower() == expected.lower(),
                f"types.{name}.token",
                f"belongs to {login!r}"
                + (
                    ""
                    if login.lower() == expected.lower()
                    else f", but the type's login is {expected!r}"
                ),
            )
    finally:
        await forge.aclose()
