"""The benches keep working: each runs for a few seconds with tiny parameters.

Nothing here is timed: the assertions are that the benches ran end to end and reported sane,
parseable figures (the numbers themselves belong in BENCHMARKS.md, not in a test).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def _run(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, *args, "--json"], capture_output=True, text=True, cwd=ROOT, timeout=240
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ingest_bench_runs() -> None:
    doc = _run(
        "bench/ingest.py",
        "--runs",
        "1",
        "--duration",
        "1",
        "--concurrency",
        "4",
        "--driver",
        "python",
    )
    run = doc["runs"][0]
    for name in ("bare", "bridge"):
        assert run[name]["ok"] > 0
        assert run[name]["errors"] == 0
        assert run[name]["p99_ms"] >= run[name]["p50_ms"] > 0
        assert run[name]["rss"]["children_mb"], "gunicorn workers' peak RSS was read"
    assert run["bridge_half_rate"]["ok"] > 0
    assert run["queued"] > 0, "the bridge really queued the webhooks in Redis"
    assert doc["summary"]["ratio"] > 0
    assert doc["machine"]["nproc"] >= 1


def test_pipeline_bench_runs() -> None:
    doc = _run(
        "bench/pipeline.py",
        "--runs",
        "1",
        "--webhooks",
        "60",
        "--workers",
        "1",
        "--rate",
        "40",
        "--latency-duration",
        "1",
        "--delay-ms",
        "20",
    )
    run = doc["runs"][0]
    for name in ("bridge", "bridge_delayed"):
        assert run[name]["webhooks_posted"] == 60
        assert run[name]["events"] >= 60, "every webhook of the mix yields at least one call"
        assert run[name]["events_per_s"] > 0
        assert run[name]["worker_rss"][0]["main_mb"] > 0
    assert run["client"]["received"] == run["client"]["sent"] == run["bridge"]["events"]
    assert run["client_delayed"]["received"] == run["client_delayed"]["sent"]
    lat = run["latency"]
    assert lat["events_matched"] == lat["events"] > 0, "every call was matched to its webhook"
    assert lat["p99_ms"] >= lat["p50_ms"] > 0
    assert doc["summary"]["web_process_peak_rss_mb"] > 0


def test_slow_clients_bench_runs() -> None:
    doc = _run(
        "bench/slow_clients.py",
        "--runs",
        "1",
        "--duration",
        "1",
        "--rate",
        "50",
        "--concurrency",
        "4",
        "--slow",
        "4",
        "--deadline",
        "1",
    )
    [run] = doc["runs"]
    for phase in ("alone", "with_slow"):
        assert run[phase]["ok"] > 0
        assert run[phase]["p99_ms"] >= run[phase]["p50_ms"] > 0
    assert run["slow"]["opened"] >= 4
    assert doc["summary"]["with_slow_requests"] > 0


def test_backfill_bench_runs() -> None:
    doc = _run("bench/backfill.py", "--orders", "300", "--live", "1", "--live-every-s", "0.5")
    assert doc["command_exit"] == 0
    assert doc["export"]["orders"] == 300 and doc["export"]["lines"] > 300
    assert any("orders counted: 300" in line for line in doc["command_summary"])
    assert doc["calls"] >= 300, "every order's customer was identified through the stand-in"
    assert doc["backfill_peak_rss_mb"] > 0 and doc["worker_peak_rss_mb"][0] > 0
    assert len(doc["live_latency_idle_ms"]) == 1 and doc["live_missing"] == 0


def test_order_path_bench_runs_and_writes_the_calls(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    doc = _run("bench/order_path.py", "--orders", "20", "--calls-out", str(calls))
    assert doc["orders"] == 20 and doc["calls"] == 40, "an identify and order_completed each"
    assert doc["drain_cpu_us_per_order"] > 0 and doc["deliver_cpu_us_per_order"] > 0
    assert doc["parse_cpu_us_per_order"] > 0 and doc["validate_cpu_us_per_order"] > 0
    lines = [json.loads(line) for line in calls.read_text().splitlines()]
    assert len(lines) == 40
    assert sum(c.get("event") == "order_completed" for c in lines) == 20


def test_redis_cost_bench_runs_and_a_quiet_drain_sends_no_batch_of_empty_moves() -> None:
    doc = _run("bench/redis_cost.py", "--journeys", "5", "--levels", "light,backlog")
    light, backlog = doc["results"]
    for r in (light, backlog):
        assert r["calls_delivered"] > 0
        assert r["seen_markers_per_journey"] == 6.0  # one per webhook, none lost or doubled
        assert 0 < r["state_bytes_per_journey"] < 20_000
    # A count, not a time: a drain that finds one webhook asked for a full batch of LMOVEs
    # (200) twice before the take stopped at an empty queue, ~3 300 commands a journey.
    assert light["commands_per_journey"] < 1_500
    assert light["top_commands_per_journey"].get("lmove", 0) < 20
