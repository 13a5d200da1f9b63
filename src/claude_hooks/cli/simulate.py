"""`claude-hooks simulate`: how many instances a type needs, and what each policy would save."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from claude_hooks.capacity import report
from claude_hooks.capacity.recommend import Recommendation, recommend
from claude_hooks.capacity.report import Summary, human, summarise
from claude_hooks.capacity.simulation import Groups, Job, Policy, Run, simulate
from claude_hooks.capacity.workload import (
    Workload,
    load_database,
    load_file,
    parse_duration,
    synthetic,
)
from claude_hooks.cli.options import chosen_config
from claude_hooks.config import InstanceRange, config_path, load_config, parse_range
from claude_hooks.core.elastic import Scaling
from claude_hooks.errors import ClaudeHooksError, ConfigError, InvalidInputError
from claude_hooks.names import valid_name

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


def parse_elastic(text: str) -> dict[str, InstanceRange]:
    """`dev=2..8,reviewer=1..3`: the elastic ranges to simulate, per type."""
    ranges: dict[str, InstanceRange] = {}
    for part in text.split(","):
        agent_type, equals, span = (piece.strip() for piece in part.partition("="))
        if not equals or not valid_name(agent_type):
            raise InvalidInputError(
                f"--elastic {text!r}: {part.strip()!r} is not TYPE=MIN..MAX (e.g. dev=2..8)"
            )
        try:
            ranges[agent_type] = parse_range(span)
        except ValueError as exc:
            raise InvalidInputError(f"--elastic {text!r}: {agent_type}: {exc}") from None
    if len(ranges) != len(text.split(",")):
        raise InvalidInputError(f"--elastic {text!r}: a type is given twice")
    return ranges


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


def by_type(workload: Workload, wanted: Sequence[str], option: str) -> dict[str, list[Job]]:
    """The workload's jobs per type, checked to hold every type `option` names."""
    found: dict[str, list[Job]] = {}
    for job in workload.jobs:
        found.setdefault(job.type, []).append(job)
    missing = [t for t in wanted if t not in found]
    if missing:
        present = ", ".join(sorted(found)) or "none"
        raise InvalidInputError(
            f"{option}: the workload ({workload.source}) has no tasks of type "
            f"{', '.join(map(repr, missing))} (its types: {present})"
        )
    return found


def sweep(
    workload: Workload,
    sizes: dict[str, list[int]],
    policies: Sequence[Policy],
    groups: Groups | None = None,
    elastic: dict[str, InstanceRange] | None = None,
    timings: tuple[float, float] = (60.0, 900.0),
) -> list[tuple[Summary, Run]]:
    """Every (type, size, policy) run, then every (type, elastic range, policy) run with
    `timings` (scale_up_wait, scale_down_idle); the types are independent, so each is
    simulated alone."""
    elastic = elastic or {}
    jobs = by_type(workload, list(sizes), "--instances")
    jobs = by_type(workload, list(elastic), "--elastic") if elastic else jobs
    runs = []
    for agent_type, counts in sizes.items():
        for count in counts:
            for policy in policies:
                run = simulate(jobs[agent_type], count, policy, groups)
                runs.append((summarise(run), run))
    for agent_type, (low, high) in elastic.items():
        scaling = Scaling(low, high, *timings)
        for policy in policies:
            run = simulate(jobs[agent_type], low, policy, groups, scaling)
            runs.append((summarise(run), run))
    return runs


def recommendations(
    workload: Workload,
    types: Sequence[str],
    target: float,
    policy: Policy,
    timings: tuple[float, float],
    groups: Groups | None,
    cost: tuple[float, float | None],
) -> list[Recommendation]:
    """A range per type (`types`, or every type of the workload) for the target p90 wait."""
    jobs = by_type(workload, types, "--target-wait")
    instance_cost, daily_spend = cost
    return [
        recommend(jobs[t], target, policy, timings, groups, instance_cost, daily_spend)
        for t in (types or sorted(jobs))
    ]


def _recommendation_json(found: Recommendation) -> dict[str, Any]:
    return {
        "type": found.type,
        "target_p90_s": round(found.target, 3),
        "instances": found.range if found.low is not None else None,
        "wait_p90_s": round(found.elastic.wait_p90, 3) if found.elastic else None,
        "mean_instances": round(found.elastic.mean_instances, 3) if found.elastic else None,
        "fixed_wait_p90_s": round(found.fixed.wait_p90, 3) if found.fixed else None,
        "daily_spend_usd": round(found.daily_spend, 2) if found.daily_spend is not None else None,
        "within_spend": found.within_spend,
        "reason": found.reason,
    }


def _duration(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    seconds = parse_duration(text, option)
    if seconds <= 0:
        raise InvalidInputError(f"{option} {text!r}: must be above 0")
    return seconds


def _fail(error: ClaudeHooksError) -> NoReturn:
    """One line on stderr; exit 2 for a bad argument or configuration, as the other commands."""
    Console(stderr=True, markup=False, highlight=False).print(f"error: {error}", soft_wrap=True)
    raise typer.Exit(2 if isinstance(error, InvalidInputError | ConfigError) else 1)


def simulate_command(
    instances: Annotated[
        str,
        typer.Option(help="Pool sizes per type: dev=2,reviewer=1 or a sweep dev=1..6."),
    ] = "",
    elastic: Annotated[
        str,
        typer.Option(help="Elastic ranges per type, simulated with the service's rule: dev=2..8."),
    ] = "",
    scale_up_wait: Annotated[
        str, typer.Option(help="Elastic: a task's wait before an instance is added.")
    ] = "60s",
    scale_down_idle: Annotated[
        str, typer.Option(help="Elastic: an added instance's idle time before it is retired.")
    ] = "15m",
    target_wait: Annotated[
        str | None,
        typer.Option(
            help="Recommend instances = MIN..MAX per type for this p90 wait (e.g. 10m), "
            "under the first policy given."
        ),
    ] = None,
    instance_cost: Annotated[
        str, typer.Option(help="With --target-wait: USD an instance costs per hour it exists.")
    ] = "0",
    daily_spend: Annotated[
        str | None,
        typer.Option(help="With --target-wait: USD a day the instances may cost at most."),
    ] = None,
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
    """Replay a workload against pools of chosen sizes and policies: waits, utilisation, queues;
    elastic pools; the elastic range to configure for a target wait."""
    try:
        if not instances and not elastic and target_wait is None:
            raise InvalidInputError(
                "give --instances (e.g. dev=1..6), --elastic (e.g. dev=2..8) or --target-wait"
            )
        if schedule and not as_json:
            raise InvalidInputError("--schedule lists each task's run in the JSON: add --json")
        sizes = parse_instances(instances) if instances else {}
        ranges = parse_elastic(elastic) if elastic else {}
        timings = (
            _duration(scale_up_wait, "--scale-up-wait") or 0.0,
            _duration(scale_down_idle, "--scale-down-idle") or 0.0,
        )
        target = _duration(target_wait, "--target-wait")
        cost = (
            _number(instance_cost, "--instance-cost", 0, 1e6),
            None if daily_spend is None else _number(daily_spend, "--daily-spend", 0, 1e9),
        )
        if target is None and (daily_spend is not None or cost[0]):
            raise InvalidInputError("--instance-cost and --daily-spend go with --target-wait")
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
            named = list(dict.fromkeys([*sizes, *ranges]))
            if not named:
                raise InvalidInputError(
                    "a synthetic workload needs its types: name them with --instances or --elastic"
                )
            loaded = synthetic(
                named,
                arrivals,
                durations,
                _number(hours, "--hours", 0.001, 24 * 366),
                _seed(seed),
                _number(follow_ups, "--follow-ups", 0, 1),
                int(_number(repos, "--repos", 1, 10_000)),
            )
        runs = sweep(loaded, sizes, policies, groups, ranges, timings)
        summaries = [summary for summary, _ in runs]
        found = []
        if target is not None:
            named = list(dict.fromkeys([*sizes, *ranges]))
            found = recommendations(loaded, named, target, policies[0], timings, groups, cost)
        if plot is not None and not sizes:
            raise InvalidInputError("--plot draws the fixed sizes of --instances: add them")
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
        if target is not None:
            document["recommendations"] = [_recommendation_json(r) for r in found]
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    console = Console(markup=False, highlight=False, width=None if sys.stdout.isatty() else 200)
    left_out = f"; {loaded.left_out} left out (never ran to an end)" if loaded.left_out else ""
    console.print(f"workload: {loaded.source}, {len(loaded.jobs)} tasks{left_out}")
    if summaries:
        console.print(report.table(summaries))
    for recommended in found:
        console.print(
            f'{recommended.type}: instances = "{recommended.range}" for a p90 wait within '
            f"{human(recommended.target)} ({recommended.reason})"
            if recommended.low is not None
            else f"{recommended.type}: {recommended.reason}"
        )
    if plot is not None:
        console.print(f"plot written to {plot}")
