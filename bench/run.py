"""Run every benchmark and record the results: `python -m bench.run [--quick] [--only NAME]`.

Full runs write `bench/results/<date>-<host>.json` and `bench/RESULTS.md`; quick runs (tiny
sizes, for `make test`) write only to `--out`, so the recorded figures stay those of a full run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    claude_overhead,
    cluster,
    dispatch,
    ingest,
    memory,
    outcomes,
    proxy_overhead,
    restart,
    start_latency,
    storage_faults,
)
from bench.common import ROOT, machine

BENCHMARKS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "ingest": ingest.run,
    "dispatch": dispatch.run,
    "start_latency": start_latency.run,
    "restart": restart.run,
    "memory": memory.run,
    "claude_overhead": claude_overhead.run,
    "proxy_overhead": proxy_overhead.run,
    "cluster": cluster.run,
    "storage_faults": storage_faults.run,
    "outcomes": outcomes.run,
}
HERE = Path(__file__).resolve().parent


def run_all(quick: bool, only: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine(),
    }
    for name, benchmark in BENCHMARKS.items():
        if only and name not in only:
            continue
        print(f"[bench] {name} ...", flush=True)
        started = time.perf_counter()
        try:
            results[name] = benchmark(quick)
        except Exception:
            # One broken benchmark must not lose the others' figures.
            results.setdefault("failed", {})[name] = traceback.format_exc()
            print(f"[bench] {name} FAILED:\n{results['failed'][name]}", flush=True)
            continue
        results[name]["bench_seconds"] = round(time.perf_counter() - started, 1)
        results[name]["recorded"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        print(f"[bench] {name} done in {results[name]['bench_seconds']} s", flush=True)
    return results


def _m(figure: dict[str, float], scale: float = 1.0, digits: int = 1) -> str:
    """median (min-max) of a figure."""
    return (
        f"{figure['median'] * scale:.{digits}f} "
        f"({figure['min'] * scale:.{digits}f}-{figure['max'] * scale:.{digits}f})"
    )


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def targets(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, target, measured, verdict) for every target the benchmarks have figures for."""
    rows = []
    if "ingest" in r:
        i = r["ingest"]
        ours = i["claude_hooks"]
        rows.append(
            (
                "ingest throughput vs floor (bare FastAPI 202)",
                ">= 0.5x",
                f"{i['ratio_to_floor']:.2f}x",
                _verdict(i["ratio_to_floor"] >= 0.5),
            )
        )
        if "postgresql_ratio_to_floor" in i:
            pg_ratio = i["postgresql_ratio_to_floor"]
            rows.append(
                (
                    "ingest on PostgreSQL vs floor",
                    ">= 0.25x",
                    f"{pg_ratio:.2f}x",
                    _verdict(pg_ratio >= 0.25),
                )
            )
            pg_p99 = i["claude_hooks_postgresql"]["fixed_rate"]["p99_ms"]["median"]
            rows.append(
                (
                    "p99 time to the 202 at 200 deliveries/s, PostgreSQL",
                    "<= 10 ms",
                    f"{pg_p99:.1f} ms",
                    _verdict(pg_p99 <= 10),
                )
            )
        if "ratio_to_peer" in i:
            rows.append(
                (
                    "ingest throughput vs peer (adnanh/webhook)",
                    ">= 1.5x",
                    f"{i['ratio_to_peer']:.2f}x",
                    _verdict(i["ratio_to_peer"] >= 1.5),
                )
            )
        p99 = ours["fixed_rate"]["p99_ms"]["median"]
        rows.append(
            (
                "p99 time to the 202 at 200 deliveries/s",
                "<= 10 ms",
                f"{p99:.1f} ms",
                _verdict(p99 <= 10),
            )
        )
        errors = ours["throughput"]["errors"] + sum(
            n for s, n in ours["fixed_rate"]["statuses"].items() if not 200 <= int(s) < 300
        )
        rows.append(("non-2xx answers under load", "0", str(errors), _verdict(errors == 0)))
        stored = ours["tasks_in_database"] == ours["accepted_with_task"]
        rows.append(
            (
                "every 202 has its task in the database",
                "all",
                f"{ours['tasks_in_database']}/{ours['accepted_with_task']}",
                _verdict(stored),
            )
        )
    if "dispatch" in r:
        pure = r["dispatch"]["pure"]
        at100 = max(pure["mixed_100_us"]["median"], pure["all_busy_100_us"]["median"])
        rows.append(
            ("pure choice at 100 instances", "<= 50 us", f"{at100:.1f} us", _verdict(at100 <= 50))
        )
        growth = r["dispatch"]["all_busy_growth_10_to_1000"]
        rows.append(
            (
                "growth 10 -> 1,000 instances (all busy)",
                "<= linear (100x)",
                f"{growth:.0f}x",
                _verdict(growth <= 100 * 1.2),
            )
        )
    if "start_latency" in r:
        s = r["start_latency"]
        rows.append(
            (
                "delivery -> agent start, p50",
                "<= 20 ms",
                f"{s['p50_ms']['median']:.1f} ms",
                _verdict(s["p50_ms"]["median"] <= 20),
            )
        )
        rows.append(
            (
                "delivery -> agent start, p99",
                "<= 50 ms",
                f"{s['p99_ms']['median']:.1f} ms",
                _verdict(s["p99_ms"]["median"] <= 50),
            )
        )
    if "restart" in r:
        rs = r["restart"]
        rows.append(
            (
                f"restart with {rs['queued_tasks']:,} queued: to /healthz",
                "<= 2 s",
                f"{rs['to_healthz_s']['median']:.2f} s",
                _verdict(rs["to_healthz_s"]["median"] <= 2),
            )
        )
        rows.append(
            (
                "restart: to the first new delivery accepted",
                "<= 2 s",
                f"{rs['to_first_delivery_s']['median']:.2f} s",
                _verdict(rs["to_first_delivery_s"]["median"] <= 2),
            )
        )
    if "memory" in r:
        per = r["memory"]["per_running_agent_mb"]["median"]
        rows.append(
            ("service memory per running agent", "<= 5 MB", f"{per:.2f} MB", _verdict(per <= 5))
        )
    if "proxy_overhead" in r:
        added = r["proxy_overhead"]["added_p50_ms"]["median"]
        rows.append(
            (
                "egress proxy: added per Messages API call, p50",
                "<= 2 ms",
                f"{added:.2f} ms",
                _verdict(added <= 2),
            )
        )
    if "outcomes" in r:
        o = r["outcomes"]
        for backend in ("sqlite", "postgresql"):
            if backend in o:
                worst = o[backend]["worst_s"]
                rows.append(
                    (
                        f"report over {o['tasks']:,} tasks, {backend} (slowest grouping)",
                        "<= 1 s",
                        f"{worst:.2f} s (CPU {o[backend]['worst_cpu_s']:.2f} s)",
                        _verdict(worst <= 1),
                    )
                )
    return rows


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Recorded {r['date']} by `make bench` on {m['host']}: {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB, Python {m['python']}, SQLite {m['sqlite']}.",
        "Each figure is the median of 5 runs, with (min-max). Rerun with `make bench`; "
        "`make bench QUICK=1` runs every benchmark at a tiny size (as `make test` does).",
        "",
        "## Targets",
        "",
        "| what | target | measured | |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in targets(r)]
    if "ingest" in r:
        i = r["ingest"]
        lines += [
            "",
            "## 1. Ingest",
            "",
            f"Signed {i['size']['body_bytes']}-byte `issue_assign` deliveries, each a new "
            "issue, into `claude-hooks serve` (SQLite) with both dev instances busy, so "
            "every delivery is verified, parsed, committed and queued. Load: wrk, 1 thread, "
            f"32 connections, {i['size']['seconds_per_throughput_run']} s per run; fixed "
            f"rate: {i['size']['rate_per_second']:.0f}/s from an asyncio client, "
            f"{i['size']['fixed_rate_requests_per_run']} deliveries per run, latency from "
            "each request's scheduled time.",
            "",
            "| server | deliveries/s | p50 at 200/s (ms) | p99 at 200/s (ms) |",
            "|---|---|---|---|",
        ]
        for key, label in (
            ("claude_hooks", "claude-hooks"),
            ("claude_hooks_postgresql", "claude-hooks on PostgreSQL (localhost)"),
            ("floor", "floor: bare FastAPI 202"),
            ("peer_webhook", "peer: adnanh/webhook + HMAC rule"),
        ):
            if key in i:
                row = i[key]
                lines.append(
                    f"| {label} | {_m(row['throughput']['per_second'], digits=0)} | "
                    f"{_m(row['fixed_rate']['p50_ms'])} | "
                    f"{_m(row['fixed_rate']['p99_ms'])} |"
                )
        for key, label in (
            ("claude_hooks", "SQLite"),
            ("claude_hooks_postgresql", "PostgreSQL"),
        ):
            deferred = i.get(key, {}).get("deferred")
            if deferred and deferred["decided_per_second"]:
                lines += [
                    "",
                    f"{label}: past `server.max_deciding` deliveries in flight the node defers "
                    "the next ones (recorded as pending, answered 202, decided right after in "
                    f"arrival order): {_m(deferred['deferred_after_run'], digits=0)} "
                    "deferred a run, "
                    f"decided in {_m(deferred['seconds_to_decide_them'])} s once wrk stopped "
                    f"({_m(deferred['decided_per_second'], digits=0)} decided/s).",
                ]
    if "dispatch" in r:
        d = r["dispatch"]
        lines += [
            "",
            "## 2. Dispatch decision",
            "",
            "| instances | pure choice, mixed (us) | "
            "pure choice, all busy (us) | `dispatch_by_type` with commit (us) |",
            "|---|---|---|---|",
        ]
        for count in (10, 100, 1000):
            e2e = d["end_to_end"].get(f"dispatch_by_type_{count}_us")
            lines.append(
                f"| {count} | {_m(d['pure'][f'mixed_{count}_us'])} | "
                f"{_m(d['pure'][f'all_busy_{count}_us'])} | "
                f"{_m(e2e, digits=0) if e2e else '-'} |"
            )
        on_postgres = d["end_to_end"].get("dispatch_by_type_100_postgresql_us")
        if on_postgres:
            lines += [
                "",
                f"`dispatch_by_type` with commit at 100 instances on PostgreSQL (localhost): "
                f"{_m(on_postgres, digits=0)} us.",
            ]
    if "start_latency" in r:
        s = r["start_latency"]
        lines += [
            "",
            "## 3. Delivery -> agent start",
            "",
            f"An idle instance, the `command` runner; {s['deliveries_per_run']} deliveries "
            "per run, one at a time; the agent (bash) writes its clock when it starts.",
            "",
            f"p50 {_m(s['p50_ms'])} ms, p99 {_m(s['p99_ms'])} ms, worst {s['max_ms']:.1f} ms.",
        ]
    if "restart" in r:
        rs = r["restart"]
        lines += [
            "",
            "## 4. Restart",
            "",
            f"{rs['queued_tasks']:,} queued tasks: start to /healthz "
            f"{_m(rs['to_healthz_s'], digits=2)} s; to the first new delivery accepted "
            f"{_m(rs['to_first_delivery_s'], digits=2)} s (process start, imports, "
            "migrations check, recovery, loading the queues).",
        ]
    if "memory" in r:
        mem = r["memory"]
        lines += [
            "",
            "## 5. Memory",
            "",
            f"Service RSS idle {_m(mem['idle_rss_mb'])} MB; with {mem['agents']} agents "
            f"running {_m(mem['rss_with_agents_mb'])} MB; per running agent "
            f"{_m(mem['per_running_agent_mb'], digits=2)} MB (the agent processes "
            "themselves not counted).",
        ]
    if "claude_overhead" in r:
        c = r["claude_overhead"]
        lines += [
            "",
            "## 6. Claude runner overhead",
            "",
            "The real bundled Claude Code CLI against a local stand-in of the Messages API, "
            "through `claude-hooks serve`: dispatch (POST /api/tasks) to the CLI's first API "
            f"request {_m(c['dispatch_to_first_api_request_s'], digits=2)} s; the service's "
            f"own RSS per running session {c['service_rss_per_running_session_mb']:.2f} MB; "
            f"each CLI process {c['cli_rss_per_running_session_mb']:.0f} MB "
            f"({c['sessions']} sessions at once).",
        ]
    if "proxy_overhead" in r:
        p = r["proxy_overhead"]
        lines += [
            "",
            "## 7. Egress proxy overhead",
            "",
            "A streamed Messages API call to the local stand-in from inside an agent's sandbox, "
            "through its bridge and the service's relay, against the same call made directly: "
            f"p50 {p['proxied_p50_ms']:.2f} ms vs {p['direct_p50_ms']:.2f} ms, "
            f"{_m(p['added_p50_ms'], digits=2)} ms added ({p['calls']} calls).",
        ]
    lines += cluster.markdown(r)
    earlier = [
        f"{name} ({r[name]['recorded']})"
        for name in BENCHMARKS
        if name in r and r[name].get("recorded", r["date"])[:13] != r["date"][:13]
    ]
    if earlier:
        lines += ["", f"Measured in an earlier run than the others: {', '.join(earlier)}."]
    history = HERE / "history.md"
    if history.exists():
        lines += ["", history.read_text().strip()]
    return "\n".join(lines) + "\n"


def _newest_recorded() -> dict[str, Any]:
    """The newest full results on record: a run of some benchmarks (`--only`) updates those
    and keeps the others' figures."""
    folder = ROOT / "bench" / "results"
    recorded = sorted(p for p in folder.glob("*.json") if p.name != "quick.json")
    if not recorded:
        return {}
    previous: dict[str, Any] = json.loads(recorded[-1].read_text())
    previous.pop("failed", None)
    for name in BENCHMARKS:
        if isinstance(previous.get(name), dict):
            previous[name].setdefault("recorded", previous["date"])
    return previous


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, results not recorded")
    parser.add_argument("--only", action="append", default=[], choices=sorted(BENCHMARKS))
    parser.add_argument("--out", type=Path, help="write the JSON here (quick runs)")
    parser.add_argument(
        "--database-url", help="a PostgreSQL server to measure on (default: 127.0.0.1:5432)"
    )
    args = parser.parse_args(argv)
    if args.database_url:
        os.environ[dispatch.POSTGRES_ENV] = args.database_url
    results = run_all(args.quick, args.only)
    if args.only and not args.quick:
        results = {**_newest_recorded(), **results}
    text = json.dumps(results, indent=2)
    if args.out is not None:
        args.out.write_text(text)
    if not args.quick:
        stamp = dt.date.today().isoformat()
        folder = ROOT / "bench" / "results"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stamp}-{results['machine']['host']}.json").write_text(text)
        (ROOT / "bench" / "RESULTS.md").write_text(markdown(results))
    for what, target, measured, verdict in targets(results):
        print(f"{what}: {measured} (target {target}) {verdict}")
    return 1 if results.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
