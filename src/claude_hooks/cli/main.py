"""The `claude-hooks` command line: serve, and manage agents and tasks in the database."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from typer._click import Context
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from claude_hooks import __version__
from claude_hooks.cli import report as report_cli
from claude_hooks.cli import spend as spend_cli
from claude_hooks.cli.labels import labels_app
from claude_hooks.cli.options import ConfigOption, GlobalOptions, chosen_config
from claude_hooks.cli.policy import policy_app
from claude_hooks.cli.scaffold import DEFAULT_TEAM
from claude_hooks.cli.simulate import simulate_command
from claude_hooks.config import CONFIG_FILE, Config, config_path, load_config
from claude_hooks.core.domain import DELIVERY_OUTCOMES, REJECTED, SPOOLED, TaskState
from claude_hooks.errors import ClaudeHooksError, ConfigError
from claude_hooks.log_format import configure_logging
from claude_hooks.store.scaler import NODES_NEEDED

# Every `claude-hooks` call is a new process that loads this module: a command imports the
# store, the forge client and the service's parts it runs in its body, so `--help`, `init` or
# `tasks list` do not load what only other commands need (bench/history.md: the test suite's
# time).
if TYPE_CHECKING:
    from claude_hooks.forge.gateway import Forge
    from claude_hooks.service.elastic import ElasticView
    from claude_hooks.service.limits import Pause
    from claude_hooks.service.spool import Spooled
    from claude_hooks.service.sweep import Sweeper
    from claude_hooks.store.base import Store
    from claude_hooks.store.elastic import InstanceChange

T = TypeVar("T")

# `--help` groups the commands by what they are for, in this order.
RUN, OPERATE, INSPECT, PLAN = "Run", "Operate", "Inspect", "Plan"
PANELS = (RUN, OPERATE, INSPECT, PLAN)


class _GroupedCommands(TyperGroup):
    """Lists the commands panel by panel in PANELS' order, not in the order this module
    happens to register them (Rich shows the panels in the order it first meets them)."""

    def list_commands(self, ctx: Context) -> list[str]:
        def panel(name: str) -> int:
            shown = getattr(self.commands[name], "rich_help_panel", None)
            return PANELS.index(shown) if shown in PANELS else len(PANELS)

        return sorted(super().list_commands(ctx), key=panel)


app = typer.Typer(
    cls=_GroupedCommands,
    help="Run a team of Claude Code agents on a Forgejo or Gitea forge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
agents_app = typer.Typer(help="Manage agent instances.", no_args_is_help=True)
tasks_app = typer.Typer(help="Show, follow, cancel and retry tasks.", no_args_is_help=True)
deliveries_app = typer.Typer(help="Show and replay webhook deliveries.", no_args_is_help=True)
app.add_typer(agents_app, name="agents", rich_help_panel=OPERATE)
app.add_typer(tasks_app, name="tasks", rich_help_panel=INSPECT)
workdirs_app = typer.Typer(
    help="List and remove the workdirs of session keys.", no_args_is_help=True
)
nodes_app = typer.Typer(help="Show the nodes that share the database.", no_args_is_help=True)
app.add_typer(deliveries_app, name="deliveries", rich_help_panel=INSPECT)
app.add_typer(nodes_app, name="nodes", rich_help_panel=INSPECT)
spool_app = typer.Typer(help="Load a node's delivery spool by hand.", no_args_is_help=True)
app.add_typer(spool_app, name="spool", rich_help_panel=OPERATE)
app.add_typer(workdirs_app, name="workdirs", rich_help_panel=OPERATE)
app.command("simulate", rich_help_panel=PLAN)(simulate_command)
app.add_typer(spend_cli.budget_app, name="budget", rich_help_panel=OPERATE)
app.add_typer(policy_app, name="policy", rich_help_panel=INSPECT)
app.command("costs", rich_help_panel=INSPECT)(spend_cli.costs)
app.command("report", rich_help_panel=INSPECT)(report_cli.report)
app.add_typer(labels_app, name="labels", rich_help_panel=OPERATE)

# Piped output is read by people too: do not squeeze tables into Rich's default 80 columns.
_WIDTH = None if sys.stdout.isatty() else 200
out = Console(markup=False, highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, markup=False, highlight=False)

# Exit codes: 1 when the command could not do what was asked, 2 for a configuration or usage
# error (the same code click gives a bad option).
USAGE_ERROR = 2

JsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON array instead of a table.")]


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print("error:", style="red", end=" ")
    err.print(message, soft_wrap=True)
    raise typer.Exit(code)


def _show_version(value: bool) -> None:
    if value:
        out.print(f"claude-hooks {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    config_file: ConfigOption = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Run a team of Claude Code agents on a Forgejo or Gitea forge."""
    GlobalOptions.config = config_file  # `--config` before the command; one after it wins


def _config(path: Path | None) -> Config:
    try:
        return load_config(config_path(chosen_config(path)))
    except ConfigError as exc:
        _fail(str(exc), USAGE_ERROR)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except ConfigError as exc:
        _fail(str(exc), USAGE_ERROR)
    except ClaudeHooksError as exc:
        _fail(str(exc))


async def _with_store(
    config: Config, action: Callable[[Store], Awaitable[T]], create: bool = False
) -> T:
    """Run `action` on the database; only commands that record something may create it."""
    from claude_hooks.errors import StoreError
    from claude_hooks.service.private_files import prepare_data_dir
    from claude_hooks.store.sql import SqlStore, Timeouts

    database = config.sqlite_file
    if not create and database is not None and not database.exists():
        raise StoreError(
            f"no database yet at {str(database)!r} (server.data_dir of {str(config.source)!r}): "
            "'claude-hooks serve' creates it; pass --config if you meant another configuration"
        )
    if create and database is not None and not database.exists():
        prepare_data_dir(config.data_dir, config.database_url)  # 0700 and 0600, as serve makes
    store = await SqlStore.open(config.database_url, Timeouts.of(config.server), create=create)
    try:
        return await action(store)
    finally:
        await store.close()


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


# serve


@app.command(rich_help_panel=RUN)
def serve(
    config_file: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Override server.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port.")] = None,
    insecure_no_signature: Annotated[
        bool,
        typer.Option(
            "--insecure-no-signature",
            help="Accept unsigned webhooks when no webhook_secret is set. Local trials only.",
        ),
    ] = False,
) -> None:
    """Start the service: webhook intake, API, and one worker per agent instance."""
    from claude_hooks.cli.doctor import startup_checks, startup_forge_checks
    from claude_hooks.web.server import check_startup, run_server

    config = _config(config_file)
    if host is not None:
        config.server.host = host
    if port is not None:
        config.server.port = port
    try:
        check_startup(config, insecure_no_signature)
        failing = [check for check in startup_checks(config) if not check.ok]
        refused = [f"{check.subject}: {check.detail}" for check in failing if check.fatal]
        if refused:
            raise ConfigError(
                f"{'; '.join(refused)}: serve refuses a configuration that cannot work "
                "(see 'claude-hooks doctor')"
            )
        configure_logging(config.server.log_level)  # the forge client's warnings, in format
        failing += [check for check in asyncio.run(startup_forge_checks(config)) if not check.ok]
        problems = [f"{check.subject}: {check.detail}" for check in failing]
        run_server(config, insecure_no_signature=insecure_no_signature, problems=problems)
    except ConfigError as exc:
        _fail(str(exc), USAGE_ERROR)
    except ClaudeHooksError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen on {config.server.host}:{config.server.port}: {exc.strerror or exc}")


# init


@app.command(rich_help_panel=RUN)
def init(
    path: Annotated[
        Path, typer.Option("--path", help="Where to write the configuration.", dir_okay=False)
    ] = Path(CONFIG_FILE),
    types: Annotated[
        str, typer.Option("--types", help="Types and their instances, as in dev=2,reviewer=1.")
    ] = DEFAULT_TEAM,
    force: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
    repository: Annotated[
        Path | None,
        typer.Option(
            "--repository",
            help="Instead: write a commented example .forgejo/claude-hooks.toml into this "
            "repository checkout.",
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Write a commented configuration with fresh secrets.

    Nothing else: `serve` creates the data dir and the database where it says. With
    --repository, a commented example .forgejo/claude-hooks.toml instead."""
    from claude_hooks.cli.policy import write_example
    from claude_hooks.cli.scaffold import parse_team, render, webhook_settings

    if repository is not None:
        try:
            written = write_example(repository, force)
        except ClaudeHooksError as exc:
            _fail(str(exc))
        out.print(f"wrote {written}: commit it, then see 'claude-hooks policy check OWNER/REPO'")
        return
    try:
        team = parse_team(types)
    except ClaudeHooksError as exc:
        _fail(str(exc), USAGE_ERROR)
    if path.exists() and not force:
        _fail(f"{str(path)!r} already exists: pass --force to replace it")
    scaffold = render(team)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created unreadable to others from the start: it holds the secrets.
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(scaffold.text)
    except OSError as exc:
        _fail(f"cannot write {str(path)!r}: {exc.strerror or exc}")
    # Nothing else: `serve` creates the data dir (0700) and the database (0600) where the
    # configuration says when it first starts, so editing data_dir first leaves nothing behind.
    config = _config(path)
    counts = ", ".join(f"{count} {name}" for name, count in team.items())
    out.print(f"wrote {path} ({counts}, mode 0600); 'serve' keeps its data in {config.data_dir}")
    out.print("")
    for line in webhook_settings(scaffold):
        out.print(line)
    out.print("")
    out.print(
        f"next: set [forgejo] url and each type's token in {path}, give Claude Code its "
        f"credentials (see the README), then 'claude-hooks doctor --config {path}' and "
        f"'claude-hooks serve --config {path}'"
    )


# agents


def _paused_json(pause: Pause | None) -> dict[str, Any] | None:
    """A type's pause as the API gives it (`GET /api/agents`)."""
    if pause is None:
        return None
    return {"reason": pause.reason, "message": pause.message, "until": pause.until}


# How many of the latest changes `agents list` reads: 5 shown per type, and the change that
# added each elastic instance.
CHANGES_READ = 200


def _agent_rows(config: Config) -> tuple[list[dict[str, Any]], dict[str, ElasticView]]:
    """The instances as rows, and the elastic types' ranges, remarks and latest changes."""
    from claude_hooks.service.elastic import elastic_views
    from claude_hooks.service.limits import stored_pauses

    async def rows(store: Store) -> tuple[list[dict[str, Any]], dict[str, ElasticView]]:
        paused = await stored_pauses(config, store, time.time())
        instances = await store.instances()
        changes = await store.elastic.changes(CHANGES_READ)
        added = {}
        for change in reversed(changes):  # the newest add of a name wins
            if change.act == "add":
                added.update(dict.fromkeys(change.names, change))
        listed = [
            {
                "name": i.name,
                "type": i.type,
                "enabled": i.enabled,
                # An idle instance of a paused type is not idle: its queue waits.
                "state": "paused" if i.state == "idle" and i.type in paused else i.state,
                "current_task": i.running,
                "queued": len(i.queue),
                "node": i.node,
                "pinned_node": i.pinned_node,
                "paused": _paused_json(paused.get(i.type)),
                "auto": i.auto,
                "added": _change_json(added[i.name]) if i.auto and i.name in added else None,
            }
            for i in instances
        ]
        return listed, elastic_views(config, instances, changes)

    return _run(_with_store(config, rows))


def _change_json(change: InstanceChange) -> dict[str, Any]:
    return {
        "at": change.at,
        "node": change.node,
        "reason": change.reason,
        "wait_seconds": change.wait_seconds,
    }


@agents_app.command("list")
def agents_list(config_file: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List agent instances with their state, and what elastic types changed lately."""
    rows, elastic = _agent_rows(_config(config_file))
    if as_json:
        _print_json(rows)
        return
    table = Table("name", "type", "enabled", "state", "current task", "queued", "node", "added")
    paused: dict[str, str] = {}
    for row in rows:
        table.add_row(
            row["name"],
            row["type"],
            "yes" if row["enabled"] else "no",
            row["state"],
            row["current_task"] or "-",
            str(row["queued"]),
            (row["node"] or "-")
            + (f" (pinned to {row['pinned_node']})" if row["pinned_node"] else ""),
            "elastic" if row["auto"] else "declared",
        )
        if row["paused"]:
            paused[row["type"]] = row["paused"]["message"]
    out.print(table)
    for agent_type, message in sorted(paused.items()):
        out.print(f"{agent_type} waits: {message}")
    for view in elastic.values():
        out.print(f"{view.type}: instances {view.range}, {view.count} now")
        for remark in view.remarks:
            out.print(f"  note: {remark}")
        for change in view.changes:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(change.at))
            verb = "added" if change.act == "add" else "retired"
            moved = f"; {change.moved} queued task(s) moved to them" if change.moved else ""
            out.print(
                f"  {when} {change.node or '-'} {verb} {', '.join(change.names)}: "
                f"{change.reason}{moved}"
            )


# nodes


@nodes_app.command("list")
def nodes_list(config_file: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List the nodes on the database: each one's state, last heartbeat and instances."""
    config = _config(config_file)
    now = time.time()
    views = _run(_with_store(config, lambda store: store.nodes.list_nodes(now)))
    rows: list[dict[str, Any]] = [
        {
            "name": v.name,
            "state": v.state,
            "url": v.url,
            "host": v.host,
            "pid": v.pid,
            "capacity": v.capacity,
            "lease_seconds": v.lease_seconds,
            "started_at": v.started_at,
            "heartbeat_at": v.heartbeat_at,
            "instances": list(v.instances),
            "spooled": v.spooled,
        }
        for v in views
    ]
    if as_json:
        _print_json(rows)
        return
    table = Table("name", "state", "last heartbeat", "capacity", "instances", "spooled", "url")
    for v in views:
        table.add_row(
            v.name,
            v.state,
            f"{now - v.heartbeat_at:.1f} s ago",
            str(v.capacity or "no limit"),
            ", ".join(v.instances) or "-",
            f"{v.spooled} not replayed" if v.spooled else "-",
            v.url or "-",
        )
    out.print(table)


@agents_app.command("add")
def agents_add(
    name: Annotated[str, typer.Argument(help="Instance name, e.g. dev-charlie.")],
    agent_type: Annotated[str, typer.Option("--type", "-t", help="A configured agent type.")],
    node: Annotated[
        str | None,
        typer.Option("--node", help="Pin the instance to this node: only it may run it."),
    ] = None,
    config_file: ConfigOption = None,
) -> None:
    """Register a new instance of a type; a running service starts using it within a second."""
    from claude_hooks.service import commands

    config = _config(config_file)
    try:
        commands.check_type(config, agent_type)  # before the database is created for it
        commands.check_node(node)
    except ConfigError as exc:
        _fail(str(exc), USAGE_ERROR)
    agent = _run(
        _with_store(
            config,
            lambda s: commands.Commands(config, s).add_agent(name, agent_type, node),
            create=True,
        )
    )
    pinned = f", pinned to node {agent.pinned_node}" if agent.pinned_node else ""
    out.print(f"added {agent.name} (type {agent.type}{pinned})")


@agents_app.command("disable")
def agents_disable(
    name: str,
    force: Annotated[bool, typer.Option(help="Also cancel the task it is running.")] = False,
    config_file: ConfigOption = None,
) -> None:
    """Stop giving work to an instance; its queued tasks move to the others of its type."""
    from claude_hooks.service.commands import Commands

    config = _config(config_file)
    cancelled = _run(
        _with_store(config, lambda s: Commands(config, s).set_enabled(name, False, force))
    )
    out.print(f"disabled {name}" + (f"; cancelling {', '.join(cancelled)}" if cancelled else ""))


@agents_app.command("enable")
def agents_enable(name: str, config_file: ConfigOption = None) -> None:
    """Give work to an instance again."""
    from claude_hooks.service.commands import Commands

    config = _config(config_file)
    _run(_with_store(config, lambda s: Commands(config, s).set_enabled(name, True)))
    out.print(f"enabled {name}")


@agents_app.command("remove")
def agents_remove(
    name: str,
    force: Annotated[bool, typer.Option(help="Also cancel the task it is running.")] = False,
    config_file: ConfigOption = None,
) -> None:
    """Remove an instance; its queued tasks move to the others, its running task finishes.

    An instance declared in the configuration's [[agents]] comes back at the next start."""
    from claude_hooks.service.commands import Commands

    config = _config(config_file)
    cancelled = _run(_with_store(config, lambda s: Commands(config, s).remove_agent(name, force)))
    out.print(f"removed {name}" + (f"; cancelling {', '.join(cancelled)}" if cancelled else ""))
    if any(seed.name == name for seed in config.agents):
        out.print(
            f"note: {name} is declared in [[agents]] of {config.source}, so the next start "
            "registers it again: delete it there to remove it for good, or use "
            f"'claude-hooks agents disable {name}' to keep it without work"
        )


# tasks


@tasks_app.command("list")
def tasks_list(
    state: Annotated[TaskState | None, typer.Option(help="Only tasks in this state.")] = None,
    agent_type: Annotated[str | None, typer.Option("--type", help="Only this type.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this instance.")] = None,
    repo: Annotated[str | None, typer.Option(help="Only this repository (owner/name).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List tasks, newest first."""
    from claude_hooks.service.limits import stored_pauses
    from claude_hooks.service.views import task_view
    from claude_hooks.store.base import TaskFilter

    config = _config(config_file)
    if agent_type is not None and agent_type not in config.types:
        known = ", ".join(sorted(config.types)) or "none"
        _fail(f"unknown type {agent_type!r} for --type (types: {known})", USAGE_ERROR)
    where = TaskFilter(state=state, type=agent_type, agent=agent, repo=repo)

    async def fetch(store: Store) -> list[dict[str, Any]]:
        tasks = await store.list_tasks(where, limit, 0)
        positions = await store.queue_positions(t.id for t in tasks)
        paused = await stored_pauses(config, store, time.time())
        return [
            {
                **task_view(t, positions.get(t.id)),
                "waiting_for": paused[t.type].message
                if t.state is TaskState.QUEUED and t.type in paused
                else None,
            }
            for t in tasks
        ]

    rows = _run(_with_store(config, fetch))
    if as_json:
        _print_json(rows)
        return
    table = Table(
        "id",
        "type",
        "agent",
        "kind",
        "state",
        "target",
        "attempts",
        "enqueued",
        "error / waits for",
    )
    for row in rows:
        state_text = row["state"]
        if row["queue_position"]:
            state_text += f" #{row['queue_position']}"
        if row["waiting_for"]:
            state_text += ", paused"
        table.add_row(
            row["id"],
            row["type"],
            row["agent"],
            row["kind"],
            state_text,
            f"{row['repo']}#{row['number']}",
            str(row["attempts"]),
            (row["enqueued_at"] or "")[:19],
            (row["error"] or row["waiting_for"] or "")[:60],
        )
    out.print(table)


@tasks_app.command("show")
def tasks_show(task_id: str, config_file: ConfigOption = None) -> None:
    """Show one task as JSON, with the path of its log."""
    from claude_hooks.service.task_lookup import find_task
    from claude_hooks.service.views import history_view, task_view

    config = _config(config_file)

    async def fetch(store: Store) -> dict[str, Any]:
        task = await find_task(store, task_id)
        positions = await store.queue_positions([task.id])
        view = task_view(task, positions.get(task.id))
        view.update(await history_view(store, task))
        view["payload"] = task.payload
        view["log"] = str((config.data_dir / "logs" / f"{task.id}.log").resolve())
        return view

    _print_json(_run(_with_store(config, fetch)))


@tasks_app.command("cancel")
def tasks_cancel(task_id: str, config_file: ConfigOption = None) -> None:
    """Cancel a queued or running task."""
    from claude_hooks.service.commands import Commands
    from claude_hooks.service.lockfile import running_service

    config = _config(config_file)
    request = _run(_with_store(config, lambda s: Commands(config, s).cancel(task_id)))
    message = request.message
    if request.was is TaskState.RUNNING and running_service(config.data_dir) is None:
        message = (
            f"task {request.task_id} is marked running but no service is running: "
            "it is recorded as cancelled when the service next starts"
        )
    out.print(message)


@tasks_app.command("retry")
def tasks_retry(task_id: str, config_file: ConfigOption = None) -> None:
    """Queue a failed or cancelled task again: a new task with the same key, kind and
    payload, linked to the old one (needs the running service)."""
    body = _post_to_service(_config(config_file), f"/api/tasks/{task_id}/retry")
    out.print(f"task {body['id']} queued on {body['agent']}, a retry of {body['retry_of']}")


@tasks_app.command("log")
def tasks_log(
    task_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new output until the task ends.")
    ] = False,
    raw: Annotated[
        bool, typer.Option(help="The claude runner's log as written (JSON lines).")
    ] = False,
    run: Annotated[
        int | None,
        typer.Option(min=1, help="Only the output of run N of the task (see 'tasks show')."),
    ] = None,
    config_file: ConfigOption = None,
) -> None:
    """Print a task's log, or one run's part of it; with -f, follow it until the task ends.
    Read through the running service's API, as the dashboard reads it (from whichever node
    has it); with no service running, from the log file (-f then needs the service)."""
    from claude_hooks.cli.task_log import Shown, from_file, service_url, through_service

    config = _config(config_file)
    params = {"follow": str(follow).lower(), "format": "raw" if raw else "text"}
    if run is not None:
        params["run"] = str(run)

    def write(chunk: bytes) -> None:
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()

    async def read(store: Store) -> Shown:
        url, why = service_url(config)
        if url is not None:
            shown = await through_service(config, url, task_id, params, write)
            if shown is not None:
                return shown
            why = f"the one at {url} does not answer"
            err.print(f"the service at {url} does not answer: reading the log file here")
        return await from_file(config, store, task_id, params, write, why)

    try:
        shown = _run(_with_store(config, read))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if shown.size == 0:
        part = f"run {run} of task" if run is not None else "task"
        err.print(f"{part} {shown.task_id} has no output ({shown.state})")


# deliveries


@deliveries_app.command("list")
def deliveries_list(
    outcome: Annotated[
        str | None,
        typer.Option(
            help=f"Only this outcome: {', '.join(DELIVERY_OUTCOMES)} "
            "(rejected: refused requests, such as a wrong secret, malformed or too large)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List recent webhook deliveries with their outcome and the reason for it."""
    from claude_hooks.service.history import delivery_rows, spooled_rows

    config = _config(config_file)
    if outcome is not None and outcome not in DELIVERY_OUTCOMES:
        _fail(
            f"unknown outcome {outcome!r} for --outcome (one of {', '.join(DELIVERY_OUTCOMES)})",
            USAGE_ERROR,
        )

    async def fetch(store: Store) -> list[dict[str, Any]]:
        return (await delivery_rows(store, outcome, limit, 0))[1]

    if outcome == SPOOLED:  # read from the spool file: the database may be what is away
        waiting = [entry.record for entry in _read_spool(config.spool_dir)]
        rows = spooled_rows(waiting, limit, 0)[1]
    else:
        rows = _run(_with_store(config, fetch))
    if as_json:
        _print_json(rows)
        return
    if outcome == REJECTED:
        _print_rejections(rows)
        return
    table = Table("id", "received", "event", "target", "sender", "outcome", "reason")
    for row in rows:
        target = f"{row['repo']}#{row['number']}" if row["number"] else (row["repo"] or "-")
        table.add_row(
            row["id"],
            (row["received_at"] or "")[:19],
            row["event_type"],
            target,
            row["sender"] or "-",
            row["outcome"],
            row["reason"] or "",
        )
    out.print(table)


def _print_rejections(rows: list[dict[str, Any]]) -> None:
    table = Table("received", "status", "from", "event", "delivery", "size", "reason", "hint")
    for row in rows:
        table.add_row(
            (row["received_at"] or "")[:19],
            str(row["status"]),
            row["remote"] or "-",
            row["event_type"] or "-",
            row["delivery_id"] or "-",
            str(row["size"]),
            row["reason"],
            row["hint"],
        )
    out.print(table)


def _read_spool(path: Path) -> list[Spooled]:
    from claude_hooks.service.spool import SpoolError, read_spool

    try:
        return read_spool(path)
    except SpoolError as exc:
        _fail(str(exc))


@spool_app.command("replay")
def spool_replay(
    path: Annotated[
        Path, typer.Argument(help="A spool file, or the data dir (server.spool_dir) holding one.")
    ],
    config_file: ConfigOption = None,
) -> None:
    """Load the deliveries of a node's spool into the database, from any host: each is stored
    pending, and the leading node runs it through the flows; one already there is skipped."""
    import dataclasses

    from claude_hooks.service.spool import FILE_NAME as SPOOL_FILE

    config = _config(config_file)
    if not path.exists():
        _fail(f"no spool at {str(path)!r}: give the file or the folder holding {SPOOL_FILE}")
    entries = _read_spool(path)

    async def load(store: Store) -> int:
        loaded = 0
        now = time.time()
        for place, entry in enumerate(entries):
            record = dataclasses.replace(
                entry.record, outcome="pending", reason=f"loaded from the spool {path}"
            )
            # In arrival order: the retrier takes the earliest due first.
            if await store.pending.add_pending(record, now + place * 1e-6):
                loaded += 1
        return loaded

    loaded = _run(_with_store(config, load))
    out.print(
        f"{loaded} of {len(entries)} spooled deliveries loaded as pending "
        f"({len(entries) - loaded} were in the database already); the leading node runs them"
    )


@deliveries_app.command("replay")
def deliveries_replay(
    delivery_id: str,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the service's answer as JSON.")
    ] = False,
    config_file: ConfigOption = None,
) -> None:
    """Run a stored delivery through the flows again (needs the running service)."""
    body = _post_to_service(_config(config_file), f"/api/deliveries/{delivery_id}/replay")
    if as_json:
        _print_json(body)
        return
    out.print(_replayed(delivery_id, body))


def _replayed(delivery_id: str, body: dict[str, Any]) -> str:
    """`delivery X replayed as replay-…: queued task T on dev-1 (assigned to dev)`."""
    line = f"delivery {delivery_id} replayed as {body.get('delivery', '?')}: {body.get('status')}"
    tasks = [f"task {t['id']} on {t['agent']}" for t in body.get("tasks", [])]
    if tasks:
        line += " " + ", ".join(tasks)
    if body.get("cancelled"):
        line += " (cancelled " + ", ".join(f"task {t}" for t in body["cancelled"]) + ")"
    if body.get("reason"):
        line += f": {body['reason']}"
    return line


def _post_to_service(config: Config, path: str) -> dict[str, Any]:
    """POST to the running service's API: what only its pool can do (replay, retry)."""
    import httpx

    from claude_hooks.service.lockfile import running_service

    service = running_service(config.data_dir)
    if service is None or not service.url:
        _fail(f"no service is running on {str(config.data_dir)!r}: start 'claude-hooks serve'")
    token = config.server.api_token.get_secret_value() if config.server.api_token else ""
    try:
        answer = httpx.post(
            f"{service.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the service at {service.url}: {exc}")
    body: dict[str, Any] = (
        answer.json()
        if answer.headers.get("content-type", "").startswith("application/json")
        else {}
    )
    if answer.status_code >= 400 and "error" in body:
        _fail(str(body["error"]))
    return body


@app.command("scaler-query", rich_help_panel=PLAN)
def scaler_query() -> None:
    """Print the PostgreSQL query giving the nodes the queued and running work needs (for
    KEDA's postgresql scaler: deploy/kubernetes/keda.yaml)."""
    sys.stdout.write(NODES_NEEDED)


# backup


@app.command("backup", rich_help_panel=OPERATE)
def backup_command(
    path: Annotated[Path, typer.Argument(help="Where to write the copy; must not exist.")],
    config_file: ConfigOption = None,
) -> None:
    """Copy the database consistently, even while the service runs (SQLite; on PostgreSQL
    it says how to use pg_dump)."""
    from claude_hooks.store.backup import backup

    config = _config(config_file)
    try:
        size = backup(config.database_url, path)
    except ClaudeHooksError as exc:
        _fail(str(exc))
    out.print(f"backed up {config.database_url} to {path} ({size:,} bytes, mode 0600)")


@app.command("restore", rich_help_panel=OPERATE)
def restore_command(
    path: Annotated[Path, typer.Argument(help="A copy 'claude-hooks backup' wrote.")],
    config_file: ConfigOption = None,
) -> None:
    """Replace the database with a backup, keeping the replaced one beside it; only while no
    service runs on it (SQLite; on PostgreSQL it says how to use pg_restore)."""
    from claude_hooks.errors import ConflictError
    from claude_hooks.service.lockfile import ServiceLock, running_service
    from claude_hooks.service.private_files import private_dir
    from claude_hooks.store.backup import restore

    config = _config(config_file)
    if config.sqlite_file is not None:
        # Holding the service's lock keeps a `serve` from starting halfway through.
        lock = ServiceLock(private_dir(config.data_dir))
        try:
            lock.acquire(url="")
        except ConflictError:
            running = running_service(config.data_dir)
            _fail(
                f"a service is running on {str(config.data_dir)!r} "
                f"(pid {running.pid if running else 'unknown'}): stop it, then restore"
            )
    try:
        kept = restore(config.database_url, path)
    except ClaudeHooksError as exc:
        _fail(str(exc))
    finally:
        if config.sqlite_file is not None:
            lock.release()
    out.print(f"restored {path} into {config.sqlite_file}")
    if kept is not None:
        out.print(f"the database it replaced is kept at {kept}")
    out.print("start the service: it brings an older backup's schema up to date")


# the Claude Code CLI


@app.command(
    "claude",
    rich_help_panel=RUN,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def claude_command(ctx: typer.Context) -> None:
    """Run the Claude Code CLI the agents run, e.g. 'claude-hooks claude setup-token'.

    It ships inside claude-agent-sdk's wheel; `make run` also links it as .venv/bin/claude."""
    from claude_hooks.agents.claude_cli import locate_cli

    cli = locate_cli()
    if cli is None:
        _fail("no Claude Code CLI: claude-agent-sdk's wheel carries one; reinstall it")
    sys.stdout.flush()
    os.execv(cli, [cli, *ctx.args])


# doctor


@app.command(rich_help_panel=INSPECT)
def doctor(config_file: ConfigOption = None) -> None:
    """Check the configuration, the database, the runners and the forge tokens."""
    from claude_hooks.cli.doctor import Check, run_checks  # it imports the Claude SDK: ~1 s

    config = _config(config_file)

    async def collect() -> list[Check]:
        return [check async for check in run_checks(config)]

    failed = 0
    for check in _run(collect()):
        mark = "ok  " if check.ok and not check.warning else ("warn" if check.ok else "FAIL")
        failed += not check.ok
        out.print(f"{mark}  {check.subject}: {check.detail}")
    if failed:
        _fail(f"{failed} check(s) failed")


# demo


@app.command(rich_help_panel=RUN)
def demo(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1; 0 picks a free one.")] = 0,
    once: Annotated[bool, typer.Option(help="Exit when the sample tasks have finished.")] = False,
    pace: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=60.0,
            help="Seconds between sample deliveries; a stand-in agent works 4 paces.",
        ),
    ] = 1.0,
) -> None:
    """Try claude-hooks without a forge: stand-in agents act out a queue, a failure, a cancel,
    review -> merge and CI -> fix on a live dashboard."""
    import logging

    from claude_hooks.cli.demo import run_demo

    logging.getLogger().setLevel(logging.WARNING)
    try:
        asyncio.run(run_demo(port, once, out.print, pace))
    except KeyboardInterrupt:
        out.print("demo stopped")


# workdirs


def _sweeper(config: Config, store: Store) -> tuple[Sweeper, Forge]:
    from claude_hooks.agents.workspace import Workspaces
    from claude_hooks.forge.gateway import Forge
    from claude_hooks.service.sweep import Sweeper

    forge = Forge(config)
    workspaces = Workspaces(
        config.data_dir, forgejo_url=config.forgejo.clone_url or config.forgejo.url
    )
    return Sweeper(config, workspaces, store.intake, forge), forge


@workdirs_app.command("list")
def workdirs_list(config_file: ConfigOption = None, as_json: JsonOption = False) -> None:
    """The session keys that have a workdir, with where it is."""
    from claude_hooks.agents.workspace import Workspaces

    config = _config(config_file)
    workspaces = Workspaces(config.data_dir)
    rows = [
        {"session_key": k, "path": str(workspaces.workdir(k))} for k in workspaces.session_keys()
    ]
    if as_json:
        _print_json(rows)
        return
    table = Table("session key", "path")
    for row in rows:
        table.add_row(row["session_key"], row["path"])
    out.print(table)


@workdirs_app.command("clean")
def workdirs_clean(
    keys: Annotated[list[str], typer.Argument(help="Session keys, e.g. dev:acme/widget:17.")],
    config_file: ConfigOption = None,
) -> None:
    """Remove the workdirs of these session keys (not while a task of the key is active)."""
    from claude_hooks.agents.workspace import Workspaces

    config = _config(config_file)

    def clean(wanted: list[str]) -> Callable[[Store], Awaitable[list[tuple[str, bool]]]]:
        async def run(store: Store) -> list[tuple[str, bool]]:
            sweeper, forge = _sweeper(config, store)
            try:
                return [(key, await sweeper.clean(key)) for key in wanted]
            finally:
                await forge.aclose()

        return run

    workspaces = Workspaces(config.data_dir)
    missing = [key for key in keys if not workspaces.workdir(key).exists()]
    present = [key for key in keys if key not in missing]
    results = _run(_with_store(config, clean(present))) if present else []
    for key in missing:
        err.print(f"{key}: no workdir (see 'claude-hooks workdirs list')")
    for key, removed in results:
        out.print(f"{key}: {'removed' if removed else 'kept: a task of this key is active'}")
    if missing or not all(removed for _, removed in results):
        raise typer.Exit(1)


@workdirs_app.command("sweep")
def workdirs_sweep(config_file: ConfigOption = None) -> None:
    """Ask the forge about every workdir's issue and remove those of closed ones."""
    config = _config(config_file)
    if not config.forgejo.url:
        _fail("[forgejo] url is not set: the sweep asks the forge which issues are closed")

    async def sweep(store: Store) -> list[str]:
        sweeper, forge = _sweeper(config, store)
        try:
            return await sweeper.sweep()
        finally:
            await forge.aclose()

    removed = _run(_with_store(config, sweep))
    out.print(f"removed {len(removed)} workdir(s)" + (": " + ", ".join(removed) if removed else ""))


def _usage_error(exc: UsageError) -> str:
    """Click's usage error as the one `error:` line every command prints, naming the help to
    read (Typer would draw it in a boxed panel over several lines)."""
    message = exc.format_message().rstrip(".")
    if exc.ctx is None:
        return message
    return f"{message} (see '{exc.ctx.command_path} --help')"


def main() -> None:
    configure_logging("warning")
    try:
        code = app(standalone_mode=False, prog_name="claude-hooks")
    except NoArgsIsHelpError as exc:  # a group without its command: its help, as Click does
        exc.show()
        sys.exit(USAGE_ERROR)
    except UsageError as exc:
        err.print("error:", style="red", end=" ")
        err.print(_usage_error(exc), soft_wrap=True)
        sys.exit(USAGE_ERROR)
    except ClickException as exc:
        err.print("error:", style="red", end=" ")
        err.print(exc.format_message(), soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
