"""`claude-hooks simulate`: how many instances a type needs, and what each policy would save."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from claude_hooks.capacity import report
from claude_hooks.capacity.report import Summary, summarise
from claude_hooks.capacity.simulation import Groups, Job, Policy, Run, simulate
from claude_hooks.cli.options import chosen_config
from claude_hooks.config import config_path, load_config
from claude_hooks.errors import ClaudeHooksError, ConfigError, InvalidInputError
from claude_hooks.names import valid_name

if TYPE_CHECKING:  # it loads SQLAlchemy and the store's schema: imported where a run needs it
    from claude_hooks.capacity.workload import Workload

MAX_INSTANCES = 1000
_SIZES = re.compile(r"^(\d+)(?:\.\.(\d+))?$")


def parse_instances(text: str) -> dict[str, list[int]]:
    """`dev=2,reviewer=1` or `dev=1..6`: the pool sizes to try, per type."""
    sizes: dict[str, list[int]] = {}
    for part in text.split(","):
        agent_type, equals, counts = part.strip().partition("=")
        match = _SIZES.match(counts.strip())
        if not equals or not valid_name(agent_type.strip()) or match is None:
            raise InvalidInputError(
                f"--instances {text!r}: {part.strip()!r} is not TYPE=N or TYPE=LOW..HIGH "
                "(e.g. dev=2,reviewer=1 or dev=1..6)"
            )
        agent_type = agent_type.strip()
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if not 1 <= low <= high <= MAX_INSTANCES:
            raise InvalidInputError(
                f"--instances {text!r}: {agent_type} needs 1 to {MAX_INSTANCES} instances, "
                "low to high"
            )
        if agent_type in sizes:
            raise InvalidInputError(f"--instances {text!r}: type {agent_type!r} given twice")
        sizes[agent_type] = list(range(low, high + 1))
    return sizes


def parse_policies(text: str) -> list[Policy]:
    policies: list[Policy] = []
    for name in (part.strip() for part in text.split(",")):
        try:
            policy = Policy(name)
        except ValueError:
            choices = ", ".join(p.value for p in Policy)
            raise InvalidInputError(
                f"--policy {text!r}: {name!r} is not a policy (choose from {choices})"
            ) from None
        if policy not in policies:
            policies.append(policy)
    return policies


def parse_groups(max_running: str | None, group_wait: str) -> Groups | None:
    """`--max-running N --group-wait head|skip`: the concurrency group to model, if any."""
    if group_wait not in ("head", "skip"):
        raise InvalidInputError(f"--group-wait {group_wait!r}: choose head or skip")
    if max_running is None:
        if group_wait != "head":
            raise InvalidInputError("--group-wait needs --max-running N")
        return None
    if not max_running.isdigit() or int(max_running) < 1:
        raise InvalidInputError(f"--max-running {max_running!r}: a whole number from 1 up")
    return Groups(int(max_running), skip=group_wait == "skip")


def _number(text: str, option: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidInputError(f"{option} {text!r}: not a number") from None
    if not low <= value <= high:
        raise InvalidInputError(f"{option} {text!r}: must be from {low:g} to {high:g}")
    return value


def _seed(text: str) -> int:
    if not text.strip().isdigit():
        raise InvalidInputError(f"--seed {text!r}: not a whole number from 0 up")
    return int(text)


def sweep(
    workload: Workload,
    sizes: dict[str, list[int]],
    policies: Sequence[Policy],
    groups: Groups | None = None,
) -> list[tuple[Summary, Run]]:
    """Every (type, size, policy) run; the types are independent, so each is simulated alone."""
    by_type: dict[str, list[Job]] = {}
    for job in workload.jobs:
        by_type.setdefault(job.type, []).append(job)
    missing = [t for t in sizes if t not in by_type]
    if missing:
        present = ", ".join(sorted(by_type)) or "none"
        raise InvalidInputError(
            f"--instances: the workload ({workload.source}) has no tasks of type "
            f"{', '.join(map(repr, missing))} (its types: {present})"
        )
    runs = []
    for agent_type, counts in sizes.items():
        for count in counts:
            for policy in policies:
                run = simulate(by_type[agent_type], count, policy, groups)
                runs.append((summarise(run), run))
    return runs


def _fail(error: ClaudeHooksError) -> NoReturn:
    """One line on stderr; exit 2 for a bad argument or configuration, as the other commands."""
    Console(stderr=True, markup=False, highlight=False).print(f"error: {error}", soft_wrap=True)
    raise typer.Exit(2 if isinstance(error, InvalidInputError | ConfigError) else 1)


def simulate_command(
    instances: Annotated[
        str,
        typer.Option(help="Pool sizes per type: dev=2,reviewer=1 or a sweep dev=1..6."),
    ] = "",
    policy: Annotated[
        str, typer.Option(help="Policies to compare, from seed, steal and shared.")
    ] = "seed,steal,shared",
    from_db: Annotated[
        bool, typer.Option("--from-db", help="Replay the tasks recorded in the database.")
    ] = False,
    workload: Annotated[
        Path | None,
        typer.Option(help="Replay a JSON or CSV file: arrival, type, session_key, duration."),
    ] = None,
    arrivals: Annotated[
        str | None, typer.Option(help="Synthetic arrivals per type: poisson:RATE_PER_HOUR.")
    ] = None,
    durations: Annotated[
        str | None,
        typer.Option(help="Synthetic run times: lognormal:MEDIAN,P90 (e.g. 6m,40m) or fixed:D."),
    ] = None,
    hours: Annotated[str, typer.Option(help="Synthetic: hours of arrivals.")] = "24",
    seed: Annotated[str, typer.Option(help="Synthetic: the random seed.")] = "1",
    follow_ups: Annotated[
        str, typer.Option(help="Synthetic: share of arrivals that continue a recent issue.")
    ] = "0",
    repos: Annotated[
        str, typer.Option(help="Synthetic: how many repositories the issues spread over.")
    ] = "1",
    max_running: Annotated[
        str | None,
        typer.Option(help="A concurrency group: tasks of a type running at once per repository."),
    ] = None,
    group_wait: Annotated[
        str,
        typer.Option(
            help="A head that does not fit its group: 'head' (the service: its queue waits) "
            "or 'skip' (the instance takes the next task that fits)."
        ),
    ] = "head",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    schedule: Annotated[
        bool, typer.Option(help="With --json: where and when each task ran, per run.")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of p90 wait against pool size.")
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Path of claude-hooks.toml, for --from-db.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Replay a workload against pools of chosen sizes and policies: waits, utilisation, queues."""
    from claude_hooks.capacity.workload import load_database, load_file, synthetic

    try:
        if not instances:
            raise InvalidInputError("--instances is required: e.g. --instances dev=1..6")
        if schedule and not as_json:
            raise InvalidInputError("--schedule lists each task's run in the JSON: add --json")
        sizes = parse_instances(instances)
        policies = parse_policies(policy)
        groups = parse_groups(max_running, group_wait)
        sources = [from_db, workload is not None, arrivals is not None or durations is not None]
        if sum(sources) != 1:
            raise InvalidInputError(
                "give one workload: --from-db, --workload FILE, "
                "or --arrivals poisson:RATE with --durations lognormal:MEDIAN,P90"
            )
        if from_db:
            loaded = load_database(
                load_config(config_path(chosen_config(config_file))).database_url
            )
        elif workload is not None:
            loaded = load_file(workload)
        else:
            if arrivals is None or durations is None:
                raise InvalidInputError("a synthetic workload needs --arrivals and --durations")
            loaded = synthetic(
                sizes,
                arrivals,
                durations,
                _number(hours, "--hours", 0.001, 24 * 366),
                _seed(seed),
                _number(follow_ups, "--follow-ups", 0, 1),
                int(_number(repos, "--repos", 1, 10_000)),
            )
        runs = sweep(loaded, sizes, policies, groups)
        summaries = [summary for summary, _ in runs]
        if plot is not None:
            from claude_hooks.capacity.plot import write_plot

            write_plot(summaries, plot, loaded.source)
    except ClaudeHooksError as exc:
        _fail(exc)
    if as_json:
        document = {
            "workload": {
                "source": loaded.source,
                "tasks": len(loaded.jobs),
                "left_out": loaded.left_out,
            },
            "runs": [report.as_json(summary, run, schedule) for summary, run in runs],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    console = Console(markup=False, highlight=False, width=None if sys.stdout.isatty() else 200)
    left_out = f"; {loaded.left_out} left out (never ran to an end)" if loaded.left_out else ""
    console.print(f"workload: {loaded.source}, {len(loaded.jobs)} tasks{left_out}")
    console.print(report.table(summaries))
    if plot is not None:
        console.print(f"plot written to {plot}")
