"""The `claude-hooks` command line: serve, and manage agents and tasks in the database."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import httpx
import typer
from rich.console import Console
from rich.table import Table

from claude_hooks import control
from claude_hooks.config import CONFIG_ENV, Config, config_path, load_config
from claude_hooks.domain import TaskState
from claude_hooks.errors import ClaudeHooksError, ConfigError, UnknownTaskError
from claude_hooks.forge import Forge
from claude_hooks.lockfile import running_service
from claude_hooks.store.base import Store, TaskFilter
from claude_hooks.store.sql import SqlStore
from claude_hooks.sweep import Sweeper
from claude_hooks.views import delivery_view, task_view
from claude_hooks.workspace import Workspaces

T = TypeVar("T")

app = typer.Typer(
    help="Run a team of Claude Code agents on a Forgejo or Gitea forge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
agents_app = typer.Typer(help="Manage agent instances.", no_args_is_help=True)
tasks_app = typer.Typer(help="Show and cancel tasks.", no_args_is_help=True)
deliveries_app = typer.Typer(help="Show and replay webhook deliveries.", no_args_is_help=True)
app.add_typer(agents_app, name="agents")
app.add_typer(tasks_app, name="tasks")
workdirs_app = typer.Typer(
    help="List and remove the workdirs of session keys.", no_args_is_help=True
)
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(workdirs_app, name="workdirs")

# Piped output is read by people too: do not squeeze tables into Rich's default 80 columns.
_WIDTH = None if sys.stdout.isatty() else 200
out = Console(markup=False, highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, markup=False, highlight=False)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar=CONFIG_ENV,
        help="Path of claude-hooks.toml (default: ./claude-hooks.toml if present).",
        dir_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON array instead of a table.")]


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print("error:", style="red", end=" ")
    err.print(message, soft_wrap=True)
    raise typer.Exit(code)


def _config(path: Path | None) -> Config:
    try:
        return load_config(config_path(path))
    except ConfigError as exc:
        _fail(str(exc), 2)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except ClaudeHooksError as exc:
        _fail(str(exc))


async def _with_store(config: Config, action: Callable[[Store], Awaitable[T]]) -> T:
    store = await SqlStore.open(config.database_url)
    try:
        return await action(store)
    finally:
        await store.close()


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


# serve


@app.command()
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
    from claude_hooks.server import run_server

    config = _config(config_file)
    if host is not None:
        config.server.host = host
    if port is not None:
        config.server.port = port
    try:
        run_server(config, insecure_no_signature=insecure_no_signature)
    except ClaudeHooksError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen on {config.server.host}:{config.server.port}: {exc.strerror or exc}")


# agents


def _agent_rows(config: Config) -> list[dict[str, Any]]:
    async def rows(store: Store) -> list[dict[str, Any]]:
        return [
            {
                "name": i.name,
                "type": i.type,
                "enabled": i.enabled,
                "state": i.state,
                "current_task": i.running,
                "queued": len(i.queue),
            }
            for i in await store.instances()
        ]

    return _run(_with_store(config, rows))


@agents_app.command("list")
def agents_list(config_file: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List agent instances with their state."""
    rows = _agent_rows(_config(config_file))
    if as_json:
        _print_json(rows)
        return
    table = Table("name", "type", "enabled", "state", "current task", "queued")
    for row in rows:
        table.add_row(
            row["name"],
            row["type"],
            "yes" if row["enabled"] else "no",
            row["state"],
            row["current_task"] or "-",
            str(row["queued"]),
        )
    out.print(table)


@agents_app.command("add")
def agents_add(
    name: Annotated[str, typer.Argument(help="Instance name, e.g. dev-charlie.")],
    agent_type: Annotated[str, typer.Option("--type", "-t", help="A configured agent type.")],
    config_file: ConfigOption = None,
) -> None:
    """Register a new instance of a type; a running service starts using it within a second."""
    config = _config(config_file)
    agent = _run(_with_store(config, lambda s: control.add_agent(s, config, name, agent_type)))
    out.print(f"added {agent.name} (type {agent.type})")


@agents_app.command("disable")
def agents_disable(
    name: str,
    force: Annotated[bool, typer.Option(help="Also cancel the task it is running.")] = False,
    config_file: ConfigOption = None,
) -> None:
    """Stop giving work to an instance; its queued tasks move to the others of its type."""
    config = _config(config_file)
    cancelled = _run(_with_store(config, lambda s: control.set_enabled(s, name, False, force)))
    out.print(f"disabled {name}" + (f"; cancelling {', '.join(cancelled)}" if cancelled else ""))


@agents_app.command("enable")
def agents_enable(name: str, config_file: ConfigOption = None) -> None:
    """Give work to an instance again."""
    config = _config(config_file)
    _run(_with_store(config, lambda s: control.set_enabled(s, name, True)))
    out.print(f"enabled {name}")


@agents_app.command("remove")
def agents_remove(
    name: str,
    force: Annotated[bool, typer.Option(help="Also cancel the task it is running.")] = False,
    config_file: ConfigOption = None,
) -> None:
    """Remove an instance; its queued tasks move to the others, its running task finishes."""
    config = _config(config_file)
    cancelled = _run(_with_store(config, lambda s: control.remove_agent(s, name, force)))
    out.print(f"removed {name}" + (f"; cancelling {', '.join(cancelled)}" if cancelled else ""))


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
    config = _config(config_file)
    where = TaskFilter(state=state, type=agent_type, agent=agent, repo=repo)

    async def fetch(store: Store) -> list[dict[str, Any]]:
        tasks = await store.list_tasks(where, limit, 0)
        positions = await store.queue_positions(t.id for t in tasks)
        return [task_view(t, positions.get(t.id)) for t in tasks]

    rows = _run(_with_store(config, fetch))
    if as_json:
        _print_json(rows)
        return
    table = Table("id", "type", "agent", "kind", "state", "target", "attempts", "enqueued", "error")
    for row in rows:
        state_text = row["state"]
        if row["queue_position"]:
            state_text += f" #{row['queue_position']}"
        table.add_row(
            row["id"],
            row["type"],
            row["agent"],
            row["kind"],
            state_text,
            f"{row['repo']}#{row['number']}",
            str(row["attempts"]),
            (row["enqueued_at"] or "")[:19],
            (row["error"] or "")[:60],
        )
    out.print(table)


@tasks_app.command("show")
def tasks_show(task_id: str, config_file: ConfigOption = None) -> None:
    """Show one task as JSON, with the path of its log."""
    config = _config(config_file)

    async def fetch(store: Store) -> dict[str, Any]:
        task = await store.get_task(task_id)
        if task is None:
            raise UnknownTaskError(task_id)
        positions = await store.queue_positions([task.id])
        view = task_view(task, positions.get(task.id))
        view["payload"] = task.payload
        view["log"] = str((config.data_dir / "logs" / f"{task.id}.log").resolve())
        return view

    _print_json(_run(_with_store(config, fetch)))


@tasks_app.command("cancel")
def tasks_cancel(task_id: str, config_file: ConfigOption = None) -> None:
    """Cancel a queued or running task."""
    config = _config(config_file)
    request = _run(_with_store(config, lambda s: control.cancel_task(s, task_id)))
    message = request.message
    if request.was is TaskState.RUNNING and running_service(config.data_dir) is None:
        message = (
            f"task {task_id} is marked running but no service is running: "
            "it is recorded as cancelled when the service next starts"
        )
    out.print(message)


# deliveries


@deliveries_app.command("list")
def deliveries_list(
    outcome: Annotated[
        str | None, typer.Option(help="Only this outcome: queued, ignored, duplicate, error.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    config_file: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List recent webhook deliveries with their outcome and the reason for it."""
    config = _config(config_file)

    async def fetch(store: Store) -> list[dict[str, Any]]:
        records = await store.intake.list_deliveries(limit, 0, outcome)
        return [delivery_view(record) for record in records]

    rows = _run(_with_store(config, fetch))
    if as_json:
        _print_json(rows)
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


@deliveries_app.command("replay")
def deliveries_replay(delivery_id: str, config_file: ConfigOption = None) -> None:
    """Run a stored delivery through the flows again (needs the running service)."""
    config = _config(config_file)
    service = running_service(config.data_dir)
    if service is None or not service.url:
        _fail(f"no service is running on {str(config.data_dir)!r}: start 'claude-hooks serve'")
    token = config.server.api_token.get_secret_value() if config.server.api_token else ""
    try:
        answer = httpx.post(
            f"{service.url}/api/deliveries/{delivery_id}/replay",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the service at {service.url}: {exc}")
    body = (
        answer.json()
        if answer.headers.get("content-type", "").startswith("application/json")
        else {}
    )
    if answer.status_code >= 400 and "error" in body:
        _fail(str(body["error"]))
    _print_json(body)


# doctor


@app.command()
def doctor(config_file: ConfigOption = None) -> None:
    """Check the configuration, the database, the runners and the forge tokens."""
    from claude_hooks.doctor import Check, run_checks  # it imports the Claude SDK: ~1 s

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


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1; 0 picks a free one.")] = 0,
    once: Annotated[bool, typer.Option(help="Exit when the sample tasks have finished.")] = False,
) -> None:
    """Try claude-hooks without a forge: stand-in agents, sample deliveries, a live dashboard."""
    from claude_hooks.demo import run_demo

    logging.getLogger().setLevel(logging.WARNING)
    try:
        asyncio.run(run_demo(port, once, out.print))
    except KeyboardInterrupt:
        out.print("demo stopped")


# workdirs


def _sweeper(config: Config, store: Store) -> tuple[Sweeper, Forge]:
    forge = Forge(config)
    workspaces = Workspaces(
        config.data_dir, forgejo_url=config.forgejo.clone_url or config.forgejo.url
    )
    return Sweeper(config, workspaces, store.intake, forge), forge


@workdirs_app.command("list")
def workdirs_list(config_file: ConfigOption = None, as_json: JsonOption = False) -> None:
    """The session keys that have a workdir, with where it is."""
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
    config = _config(config_file)

    async def clean(store: Store) -> list[tuple[str, bool]]:
        sweeper, forge = _sweeper(config, store)
        try:
            return [(key, await sweeper.clean(key)) for key in keys]
        finally:
            await forge.aclose()

    for key, removed in _run(_with_store(config, clean)):
        out.print(f"{key}: {'removed' if removed else 'kept (no workdir, or a task is active)'}")


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


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
