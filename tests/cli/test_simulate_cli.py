"""`claude-hooks simulate` as a user runs it, and its replay of what the real service did."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from claude_hooks.capacity.simulation import Policy
from claude_hooks.capacity.workload import synthetic
from claude_hooks.core.domain import DispatchRequest, TaskKind, TaskState
from tests.conftest import ServiceFactory
from tests.support import all_idle, make_config, wait_until

# A's 60 s run holds #0 while C queues behind it; #1 is free from 11 s (unit/test_simulation.py).
WORKLOAD = [
    {"arrival": 0, "type": "dev", "session_key": "a", "duration": "1m"},
    {"arrival": 1, "type": "dev", "session_key": "b", "duration": 10},
    {"arrival": 2, "type": "dev", "session_key": "c", "duration": "5s"},
]


def simulate(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "claude_hooks", "simulate", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **kwargs)


def run_json(*args: str) -> dict[str, Any]:
    done = simulate(*args, "--json")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_synthetic_sweep_as_json() -> None:
    document = run_json(
        "--instances",
        "dev=1..3",
        "--arrivals",
        "poisson:30",
        "--durations",
        "lognormal:6m,40m",
        "--hours",
        "4",
        "--seed",
        "7",
    )
    runs = document["runs"]
    assert [(r["instances"], r["policy"]) for r in runs] == [
        (n, p.value) for n in (1, 2, 3) for p in Policy
    ]
    tasks = document["workload"]["tasks"]
    assert 80 <= tasks <= 160  # 30 an hour for 4 hours
    for run in runs:
        assert run["tasks"] == tasks
        assert run["wait_p50_s"] <= run["wait_p90_s"] <= run["wait_p99_s"] <= run["wait_max_s"]
        assert 0 < run["utilisation"] <= 1
        if run["policy"] != "seed":
            assert run["waited_while_idle"] == 0
    one = [r for r in runs if r["instances"] == 1]
    assert len({(r["wait_p90_s"], r["wait_max_s"]) for r in one}) == 1  # one FIFO queue


SYNTHETIC = ("--arrivals", "poisson:12", "--durations", "lognormal:6m,40m", "--hours", "24")


def test_elastic_ranges_are_simulated_with_the_services_rule() -> None:
    document = run_json("--instances", "dev=2", "--elastic", "dev=1..4", "--policy", "seed",
                        *SYNTHETIC)  # fmt: skip
    fixed, elastic = document["runs"]
    assert "elastic" not in fixed and elastic["elastic"] == "1..4"
    assert 1 <= elastic["mean_instances"] <= elastic["peak_instances"] <= 4
    assert elastic["changes"] > 0 and elastic["tasks"] == fixed["tasks"]


def test_the_recommended_range_is_the_same_every_time(tmp_path: Path) -> None:
    """From a recorded workload (a file of a day's tasks): the same min..max every time."""
    jobs = synthetic(["dev"], "poisson:12", "lognormal:6m,40m", 24, seed=5).jobs
    recorded = tmp_path / "day.json"
    recorded.write_text(json.dumps([
        {"arrival": j.arrival, "type": j.type, "session_key": j.session_key,
         "duration": j.duration} for j in jobs
    ]))  # fmt: skip
    args = ("--target-wait", "10m", "--instance-cost", "0.5", "--policy", "seed",
            "--workload", str(recorded))  # fmt: skip
    (found,) = run_json(*args)["recommendations"]
    low, high = map(int, found["instances"].split(".."))
    assert 1 <= low <= high and found["wait_p90_s"] <= 600 and found["fixed_wait_p90_s"] <= 600
    assert found["daily_spend_usd"] == pytest.approx(found["mean_instances"] * 12, abs=0.02)
    text = simulate(*args)  # a second run: the same range
    assert text.returncode == 0, text.stderr
    assert f'dev: instances = "{found["instances"]}" for a p90 wait within 10m 00s' in text.stdout


def test_workload_file_gives_the_hand_computed_schedule(tmp_path: Path) -> None:
    path = tmp_path / "workload.json"
    path.write_text(json.dumps(WORKLOAD))
    document = run_json("--workload", str(path), "--instances", "dev=2", "--schedule")
    by_policy = {run["policy"]: run for run in document["runs"]}
    assert [s["wait_s"] for s in by_policy[Policy.SEED]["schedule"]] == [0, 0, 58]
    assert [s["instance"] for s in by_policy[Policy.SEED]["schedule"]] == [0, 1, 0]
    assert by_policy[Policy.SEED]["waited_while_idle"] == 1
    assert [s["wait_s"] for s in by_policy[Policy.STEAL]["schedule"]] == [0, 0, 9]
    assert [s["wait_s"] for s in by_policy[Policy.SHARED]["schedule"]] == [0, 0, 9]
    csv = tmp_path / "workload.csv"
    rows = ["arrival,type,session_key,duration"]
    rows += [f"{r['arrival']},{r['type']},{r['session_key']},{r['duration']}" for r in WORKLOAD]
    csv.write_text("\n".join(rows) + "\n")
    table = simulate("--workload", str(csv), "--instances", "dev=2", "--policy", "seed")
    assert table.returncode == 0, table.stderr
    assert f"workload: file {csv}, 3 tasks" in table.stdout
    assert "58s" in table.stdout  # seed's p90 and max wait
    assert "1 (33%)" in table.stdout  # C waited beside an idle peer


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plot_writes_a_png(tmp_path: Path) -> None:
    plot = tmp_path / "capacity.png"
    done = simulate(
        "--instances", "dev=1..4,reviewer=1..2", "--arrivals", "poisson:10",
        "--durations", "fixed:5m", "--hours", "2", "--policy", "seed,steal", "--plot", str(plot),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"plot written to {plot}" in done.stdout
    width, height = png_size(plot)
    assert width > 2 * height  # one panel per type, side by side


def test_plot_without_matplotlib_is_one_clear_error(tmp_path: Path) -> None:
    # The interpreter runs the real CLI with matplotlib made unimportable, as if not installed.
    code = (
        "import sys; sys.modules['matplotlib'] = None; "
        "from claude_hooks.cli.main import main; sys.argv[0] = 'claude-hooks'; main()"
    )
    plot = tmp_path / "capacity.png"
    done = subprocess.run(
        [sys.executable, "-c", code, "simulate", "--instances", "dev=1", "--arrivals",
         "poisson:30", "--durations", "fixed:1m", "--hours", "1", "--plot", str(plot)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: --plot needs matplotlib, an optional dependency: "
        "pip install 'claude-hooks[plot]' (or matplotlib>=3.7)"
    ]
    assert not plot.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--arrivals", "poisson:1", "--durations", "fixed:1m"), "give --instances (e.g."),
        (("--instances", "dev=1", "--policy", "seed,fifo", "--arrivals", "poisson:1",
          "--durations", "fixed:1m"), "'fifo' is not a policy (choose from seed, steal, shared)"),
        (("--instances", "dev=1", "--from-db", "--arrivals", "poisson:1"), "give one workload"),
        (("--instances", "dev=1", "--workload", "missing.json"), "cannot read it"),
        (("--elastic", "dev=3..1", "--arrivals", "poisson:1", "--durations", "fixed:1m"),
         "--elastic 'dev=3..1': dev: the minimum 3 is above the maximum 1"),
        (("--target-wait", "soon", "--elastic", "dev=1..2"), "--target-wait: 'soon' is not"),
        (("--instances", "dev=1", "--daily-spend", "5", "--arrivals", "poisson:1",
          "--durations", "fixed:1m"), "--instance-cost and --daily-spend go with --target-wait"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    done = simulate(*args)
    assert done.returncode == 2, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]


def test_from_db_without_a_database_says_so(tmp_path: Path) -> None:
    config = tmp_path / "claude-hooks.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "nothing"}"\n')
    done = simulate("--from-db", "--instances", "dev=1", "--config", str(config))
    assert done.returncode == 1
    assert "error: no database at" in done.stderr
    assert not (tmp_path / "nothing").exists()  # reading never creates it


SLEEP = [
    sys.executable,
    "-c",
    "import json, sys, time; time.sleep(json.load(sys.stdin)['payload']['seconds'])",
]
# (issue number = session key, seconds): placed as the service places them on two instances.
RECORDED = [(1, 0.8), (2, 0.3), (3, 0.5), (1, 0.3), (4, 0.4), (5, 0.3)]
TOLERANCE_S = 0.25  # per task: the service's own dispatch, start and record steps take ms each


async def test_the_simulation_of_a_recorded_workload_matches_what_the_service_did(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    config = make_config(
        tmp_path,
        types={"dev": {"runner": "command", "command": SLEEP, "workdir": "none"}},
        agents=[{"name": "dev-alpha", "type": "dev"}, {"name": "dev-bravo", "type": "dev"}],
    )
    service = await start_service(config)
    ids = [
        await service.pool.dispatch_by_type(
            "dev",
            DispatchRequest.for_type(
                "dev", TaskKind.WORK_ISSUE, "acme/widget", number, {"seconds": seconds}
            ),
        )
        for number, seconds in RECORDED
    ]
    # A worker is idle again only after its task's end is recorded.
    await wait_until(lambda: all_idle(service.store), timeout=30)
    recorded = {t: await service.store.get_task(t) for t in ids}
    assert all(t is not None and t.state is TaskState.SUCCEEDED for t in recorded.values())

    config_file = tmp_path / "claude-hooks.toml"
    config_file.write_text(f'[server]\ndata_dir = "{config.data_dir}"\n')
    done = simulate(
        "--from-db", "--instances", "dev=2", "--policy", "seed", "--json", "--schedule",
        "--config", str(config_file),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["workload"] == {
        "source": document["workload"]["source"],
        "tasks": len(ids),
        "left_out": 0,
    }
    simulated = {s["label"]: s for s in document["runs"][0]["schedule"]}
    names = ["dev-alpha", "dev-bravo"]
    for task_id, task in recorded.items():
        assert task is not None and task.started_at is not None
        real_wait = task.started_at - task.enqueued_at
        assert simulated[task_id]["instance"] == names.index(task.agent), task_id
        assert abs(simulated[task_id]["wait_s"] - real_wait) <= TOLERANCE_S, (
            task_id,
            simulated[task_id]["wait_s"],
            real_wait,
        )
    # The workload made some tasks wait: the comparison is not of zeros.
    assert max(s["wait_s"] for s in simulated.values()) > 1.0
