"""Workloads to replay: a JSON or CSV file, a synthetic stream, or the tasks a database recorded."""

from __future__ import annotations

import csv
import json
import math
import random
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from claude_hooks.capacity.simulation import Job
from claude_hooks.errors import InvalidInputError, StoreError
from claude_hooks.store.schema import tasks

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# The standard normal quantile of 0.9: a lognormal's p90 is exp(mu + Z90 * sigma).
Z90 = 1.2815515655446004


def parse_duration(text: str, what: str) -> float:
    """Seconds from `90s`, `6m`, `1.5h`, `250ms` or a bare number of seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise InvalidInputError(
            f"{what}: {text!r} is not a duration (write e.g. 90s, 6m, 1.5h, or seconds)"
        )
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@dataclass(frozen=True, slots=True)
class Workload:
    jobs: list[Job]
    source: str
    left_out: int = 0  # recorded tasks that never ran to an end, so have no run time


# files


def load_file(path: Path) -> Workload:
    """Jobs from JSON (a list of objects) or CSV (a header row): arrival, type, session_key,
    duration. Arrivals are seconds from any origin; durations are seconds or `6m`-style text."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"--workload {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"--workload {path}: not UTF-8 text") from None
    if path.suffix.lower() == ".csv":
        rows: list[Any] = list(csv.DictReader(text.splitlines()))
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(
                f"--workload {path}: not JSON ({exc.msg} at line {exc.lineno}); "
                "give a list of objects, or a .csv file"
            ) from None
        if not isinstance(rows, list):
            raise InvalidInputError(f"--workload {path}: the JSON must be a list of objects")
    jobs = [_job(row, f"--workload {path}, row {number}") for number, row in enumerate(rows, 1)]
    return Workload(jobs, f"file {path}")


def _job(row: Any, where: str) -> Job:
    if not isinstance(row, Mapping):
        raise InvalidInputError(f"{where}: not an object with arrival, type and duration")
    missing = [name for name in ("arrival", "type", "duration") if row.get(name) in (None, "")]
    if missing:
        raise InvalidInputError(f"{where}: {', '.join(missing)} missing")
    arrival = _number(row["arrival"], f"{where}: arrival")
    duration = (
        parse_duration(row["duration"], f"{where}: duration")
        if isinstance(row["duration"], str)
        else _number(row["duration"], f"{where}: duration")
    )
    if duration < 0:
        raise InvalidInputError(f"{where}: duration is negative")
    key = row.get("session_key") or f"{row['type']}:{where}"
    return Job(arrival, str(row["type"]), str(key), duration)


def _number(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise InvalidInputError(f"{what}: {value!r} is not a finite number")
    return number


# synthetic


def synthetic(
    types: Iterable[str],
    arrivals: str,
    durations: str,
    hours: float,
    seed: int,
    follow_ups: float = 0.0,
    repos: int = 1,
) -> Workload:
    """Poisson arrivals per type; a follow-up continues one of the type's last ten keys. With
    `repos` above 1 each new issue belongs to one of that many repositories, drawn evenly."""
    rate = _poisson(arrivals)
    draw = _duration_law(durations)
    jobs: list[Job] = []
    for agent_type in types:
        rng = random.Random(f"{seed}:{agent_type}")
        keys: list[str] = []
        now = rng.expovariate(rate)
        while now < hours * 3600.0:
            if keys and rng.random() < follow_ups:
                key = rng.choice(keys[-10:])
            else:
                repo = "repo" if repos == 1 else f"repo-{rng.randrange(repos) + 1}"
                key = f"{agent_type}:synthetic/{repo}:{len(keys) + 1}"
                keys.append(key)
            jobs.append(Job(now, agent_type, key, draw(rng)))
            now += rng.expovariate(rate)
    source = f"synthetic {arrivals}, {durations}, {hours:g} h, seed {seed}"
    source += f", follow-ups {follow_ups:g}" if follow_ups else ""
    return Workload(jobs, source + (f", {repos} repositories" if repos > 1 else ""))


def _poisson(text: str) -> float:
    """Arrivals per second from `poisson:RATE_PER_HOUR`."""
    law, _, rate_text = text.partition(":")
    if law != "poisson":
        raise InvalidInputError(f"--arrivals {text!r}: write poisson:RATE (arrivals per hour)")
    rate = _number(rate_text, f"--arrivals {text!r}: the rate")
    if rate <= 0:
        raise InvalidInputError(f"--arrivals {text!r}: the rate must be above 0")
    return rate / 3600.0


def _duration_law(text: str) -> Callable[[random.Random], float]:
    law, _, args = text.partition(":")
    if law == "fixed":
        value = parse_duration(args, f"--durations {text!r}")
        return lambda _rng: value
    if law == "lognormal":
        median_text, _, p90_text = args.partition(",")
        median = parse_duration(median_text, f"--durations {text!r}: the median")
        p90 = parse_duration(p90_text, f"--durations {text!r}: the p90")
        if not 0 < median < p90:
            raise InvalidInputError(
                f"--durations {text!r}: the median must be above 0 and below the p90"
            )
        mu, sigma = math.log(median), math.log(p90 / median) / Z90
        return lambda rng: rng.lognormvariate(mu, sigma)
    raise InvalidInputError(
        f"--durations {text!r}: write lognormal:MEDIAN,P90 (e.g. lognormal:6m,40m) or fixed:D"
    )


# the database


def load_database(url: str) -> Workload:
    """The recorded tasks that ran to an end, read without writing (no migration, no lock)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not path.is_file():
            raise StoreError(f"no database at {str(path)!r}: check server.data_dir in the config")
        uri = f"{path.resolve().as_uri()}?mode=ro"
        engine = sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True))
    else:
        engine = sa.create_engine(parsed)
    query = sa.select(
        tasks.c.id,
        tasks.c.type,
        tasks.c.session_key,
        tasks.c.enqueued_at,
        tasks.c.started_at,
        tasks.c.finished_at,
    ).order_by(tasks.c.enqueued_at, tasks.c.id)
    try:
        with engine.connect() as connection:
            rows = connection.execute(query).all()
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(
            f"cannot read the tasks of {url!r}: {exc.__class__.__name__}: "
            f"{exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc}"
        ) from None
    finally:
        engine.dispose()
    jobs = [
        Job(enqueued, agent_type, key, finished - started, task_id)
        for task_id, agent_type, key, enqueued, started, finished in rows
        if started is not None and finished is not None
    ]
    return Workload(jobs, f"database {parsed.render_as_string()}", len(rows) - len(jobs))
