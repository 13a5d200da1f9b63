"""Every benchmark, at a tiny size, so `make bench` never rots."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_every_benchmark_runs_and_reports_its_figures(tmp_path: Path) -> None:
    missing = [tool for tool in ("wrk", "webhook") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (.ci/run installs the Debian packages)")
    out = tmp_path / "quick.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert set(results) >= {
        "machine",
        "ingest",
        "dispatch",
        "start_latency",
        "restart",
        "memory",
        "claude_overhead",
        "proxy_overhead",
        "outcomes",
    }
    ingest = results["ingest"]["claude_hooks"]
    assert ingest["throughput"]["per_second"]["median"] > 0
    assert ingest["throughput"]["errors"] == 0
    assert ingest["tasks_in_database"] == ingest["accepted_with_task"] > 0
    assert results["ingest"]["floor"]["throughput"]["per_second"]["median"] > 0
    assert results["ingest"]["peer_webhook"]["throughput"]["per_second"]["median"] > 0
    assert results["dispatch"]["pure"]["mixed_100_us"]["median"] > 0
    assert results["start_latency"]["p50_ms"]["median"] > 0
    assert results["restart"]["to_healthz_s"]["median"] > 0
    assert results["memory"]["per_running_agent_mb"]["runs"] == 2
    assert results["claude_overhead"]["dispatch_to_first_api_request_s"]["median"] > 0
    assert results["proxy_overhead"]["proxied_p50_ms"] > 0
    assert results["outcomes"]["sqlite"]["worst_s"] > 0
    assert "restart with" in done.stdout  # the targets are printed


def test_the_workload_recorder_writes_what_simulate_reads(tmp_path: Path) -> None:
    out = tmp_path / "recorded.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.record_workload",
            str(out),
            "--hours",
            "1",
            "--scale",
            "3600",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tasks recorded into" in done.stdout
    rows = out.read_text().splitlines()
    assert rows[0] == "arrival,type,session_key,duration" and len(rows) > 5
    assert rows[1].split(",")[2].startswith("dev:acme/repo-")
