"""Ingest bench: the web as the Procfile runs it vs a bare Flask app under the same gunicorn.

    .venv/bin/python bench/ingest.py [--runs 5] [--duration 10] [--concurrency 16] [--json]

Each run drives both apps (alternating, same Redis, same machine) with signed, realistic
webhooks (bench.common.WebhookFactory: a topic mix, 2-20 KB bodies, a fresh webhook id per
request) at fixed concurrency for a fixed time, then drives the bridge open loop at half its
measured maximum rate for the p99 target. Prints req/s, p50, p99, the ratio bridge/bare (per run
and the median), and each web process's peak RSS.

It also prints the CPU each request cost, per app and run, split by process group: web (the
gunicorn master and workers), redis (redis-server) and driver (wrk or the Python driver, which
shares the cores), read from /proc before and after the timed window and divided by the requests
served; and the CPU ratio bare/bridge (higher is better for the bridge, like the throughput
ratio). Throughput swings from run to run with how gunicorn's workers happen to share the
connections; CPU per request does not, and on a CPU-bound machine its ratio is the steady-state
throughput ratio. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import contextlib
import http.cookiejar
import json
import os
import re
import statistics
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis as redis_lib

from bench.common import (
    Service,
    cpu_s,
    drive,
    have_wrk,
    machine,
    reaped_children_cpu_s,
    run_py_driver,
    service_env,
    services,
    start_redis,
    start_web,
    tree_cpu_s,
    tree_rss,
)

BARE_APP = "bench.bare_app:app"
OPS_TOKEN = "bench-ops-token-for-ingest"


class Operator:
    """With --ops: someone looking at the ops console while webhooks pour in (the shops'
    health and one shop's charts, once a second each), on a thread of the bench process."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.stop = threading.Event()
        self.pages = 0
        self.errors = 0
        self.thread = threading.Thread(target=self._browse, daemon=True)

    def __enter__(self) -> Operator:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _browse(self) -> None:
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        form = urllib.parse.urlencode({"token": OPS_TOKEN}).encode()
        while not self.stop.is_set():
            try:
                with opener.open(self.base + "/ops/login", data=form, timeout=10) as resp:
                    page = resp.read().decode()
                shops = re.findall(r'href="(/ops/shops/[^"/]+)"', page)
                self.pages += 1
                if shops:
                    with opener.open(self.base + shops[0], timeout=10) as resp:
                        resp.read()
                    self.pages += 1
            except OSError:
                self.errors += 1
            self.stop.wait(1.0)


CPU_GROUPS = ("web", "redis", "driver")


def cpu_by_group(web: Service, redis_svc: Service) -> dict[str, float]:
    """CPU seconds used so far by each process group the timed window is charged to."""
    # The driver has exited by the end of the window, so its CPU is read as a reaped child's.
    return {
        "web": tree_cpu_s(web.pid),
        "redis": cpu_s(redis_svc.pid),
        "driver": reaped_children_cpu_s(),
    }


def cpu_us_per_request(
    before: dict[str, float], after: dict[str, float], requests: int
) -> dict[str, float]:
    """CPU microseconds per request served in the window, per group and in total."""
    used = {g: (after[g] - before[g]) * 1e6 / max(1, requests) for g in CPU_GROUPS}
    return {**{g: round(us, 1) for g, us in used.items()}, "total": round(sum(used.values()), 1)}


def _one(
    web: Service,
    redis_svc: Service,
    args: argparse.Namespace,
    *,
    rate: float = 0.0,
    seed: int = 1,
    browsing: bool = False,
) -> dict[str, Any]:
    # A short warm-up first: imports, connection pools and the Lua script cache.
    drive(
        web.port,
        concurrency=args.concurrency,
        duration_s=1,
        prefer_wrk=args.driver != "python",
        seed=seed,
        rate=0.0,
    )
    operator = Operator(web.port) if browsing else contextlib.nullcontext()
    with operator:
        before = cpu_by_group(web, redis_svc)
        result = drive(
            web.port,
            concurrency=args.concurrency,
            duration_s=args.duration,
            prefer_wrk=args.driver != "python",
            seed=seed,
            rate=rate,
        )
        after = cpu_by_group(web, redis_svc)
    if isinstance(operator, Operator):
        result["ops_pages"] = operator.pages
        result["ops_errors"] = operator.errors
    result["cpu_us_per_req"] = cpu_us_per_request(before, after, result["requests"])
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with services() as started:
        redis_svc = start_redis()
        started.append(redis_svc)
        client = redis_lib.Redis.from_url(redis_svc.url)
        env = service_env(redis_svc.url)
        if args.ops:  # the console on (and browsed, see Operator) while the bridge is measured
            env.update(OPS_TOKEN=OPS_TOKEN, OPS_COOKIE_SECURE="false")
        for i in range(args.runs):
            result: dict[str, Any] = {}
            for name, app in (("bare", BARE_APP), ("bridge", None)):
                client.flushall()
                web = start_web(env, app=app, workers=args.web_concurrency)
                started.append(web)
                try:
                    browsing = args.ops and name == "bridge"
                    result[name] = _one(web, redis_svc, args, seed=i + 1, browsing=browsing)
                    if name == "bridge":
                        half = max(1.0, result["bridge"]["rps"] / 2)
                        client.flushall()
                        result["bridge_half_rate"] = run_py_driver(
                            web.port,
                            concurrency=max(args.concurrency, 32),
                            duration_s=args.duration,
                            rate=half,
                            seed=100 + i,
                            pool=256,
                        )
                        result["bridge_half_rate"]["offered_rps"] = round(half, 1)
                        result["queued"] = sum(
                            int(client.llen(k)) for k in client.scan_iter("cb:*:in")
                        )
                    result[name]["rss"] = tree_rss(web.pid)
                finally:
                    web.stop()
                    started.remove(web)
            bare, bridge = result["bare"]["rps"], result["bridge"]["rps"]
            result["ratio"] = round(bridge / bare, 3) if bare else 0.0
            bare_cpu = result["bare"]["cpu_us_per_req"]["total"]
            bridge_cpu = result["bridge"]["cpu_us_per_req"]["total"]
            result["cpu_ratio"] = round(bare_cpu / bridge_cpu, 3) if bridge_cpu else 0.0
            runs.append(result)
            time.sleep(0.5)

    def med(path: tuple[str, ...]) -> float:
        vals = []
        for r in runs:
            v: Any = r
            for p in path:
                v = v[p]
            vals.append(float(v))
        return round(statistics.median(vals), 3)

    web_rss = max(max(r["bridge"]["rss"]["children_mb"] or [0.0]) for r in runs)
    summary = {
        "bare_rps": med(("bare", "rps")),
        "bare_p50_ms": med(("bare", "p50_ms")),
        "bare_p99_ms": med(("bare", "p99_ms")),
        "bridge_rps": med(("bridge", "rps")),
        "bridge_p50_ms": med(("bridge", "p50_ms")),
        "bridge_p99_ms": med(("bridge", "p99_ms")),
        "ratio": med(("ratio",)),
        "cpu_us_per_req": {
            app: {g: med((app, "cpu_us_per_req", g)) for g in (*CPU_GROUPS, "total")}
            for app in ("bare", "bridge")
        },
        "cpu_ratio": med(("cpu_ratio",)),
        "half_rate_offered_rps": med(("bridge_half_rate", "offered_rps")),
        "half_rate_rps": med(("bridge_half_rate", "rps")),
        "half_rate_p50_ms": med(("bridge_half_rate", "p50_ms")),
        "half_rate_p99_ms": med(("bridge_half_rate", "p99_ms")),
        "web_process_peak_rss_mb": web_rss,
        "web_dyno_peak_rss_mb": max(r["bridge"]["rss"]["total_mb"] for r in runs),
        "targets": {},
    }
    summary["targets"] = {
        "ratio_ge_0.8": summary["ratio"] >= 0.8,
        "cpu_ratio_ge_0.8": summary["cpu_ratio"] >= 0.8,
        "p99_half_rate_lt_25ms": summary["half_rate_p99_ms"] < 25,
        "web_rss_lt_80mb": web_rss < 80,
    }
    return {
        "bench": "ingest",
        "machine": machine(),
        "params": {
            "runs": args.runs,
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "web_concurrency": args.web_concurrency,
            "ops": args.ops,
            "driver": "wrk" if args.driver != "python" and have_wrk(install=False) else "python",
        },
        "summary": summary,
        "runs": runs,
    }


def _cpu_line(us: dict[str, float]) -> str:
    """`web+redis+driver=total`, in whole microseconds."""
    return "+".join(f"{us[g]:.0f}" for g in CPU_GROUPS) + f"={us['total']:.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--concurrency", type=int, default=16, help="connections kept busy")
    p.add_argument(
        "--web-concurrency",
        type=int,
        default=min(8, 2 * len(os.sched_getaffinity(0))),
        help="WEB_CONCURRENCY for both apps (default: gunicorn.conf.py's, 2 per core)",
    )
    p.add_argument(
        "--driver",
        choices=("auto", "python"),
        default="auto",
        help="auto: wrk if installed (apt-get install when root), else python",
    )
    p.add_argument(
        "--ops",
        action="store_true",
        help="the ops console on (OPS_TOKEN set), browsed once a second while the bridge runs",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        print(json.dumps(out))
        return 0
    s = out["summary"]
    m = out["machine"]
    print(
        f"machine: {m['nproc']} cpu, {m['cpu']}, {m['mem_gb']} GB; driver {out['params']['driver']}"
    )
    for i, r in enumerate(out["runs"], 1):
        print(
            f"run {i}: bare {r['bare']['rps']:.0f} req/s p50 {r['bare']['p50_ms']} p99 "
            f"{r['bare']['p99_ms']} ms | bridge {r['bridge']['rps']:.0f} req/s p50 "
            f"{r['bridge']['p50_ms']} p99 {r['bridge']['p99_ms']} ms | ratio {r['ratio']:.2f} | "
            f"half rate {r['bridge_half_rate']['offered_rps']:.0f}/s p99 "
            f"{r['bridge_half_rate']['p99_ms']} ms"
            + (f" | console pages {r['bridge'].get('ops_pages', 0)}" if args.ops else "")
        )
        print(
            f"       CPU µs/req: bare {_cpu_line(r['bare']['cpu_us_per_req'])} | "
            f"bridge {_cpu_line(r['bridge']['cpu_us_per_req'])} | cpu ratio {r['cpu_ratio']:.2f}"
        )
    print(
        f"median: bare {s['bare_rps']:.0f} req/s, bridge {s['bridge_rps']:.0f} req/s, "
        f"ratio {s['ratio']:.2f}; bridge p50 {s['bridge_p50_ms']} p99 {s['bridge_p99_ms']} ms; "
        f"at half rate ({s['half_rate_offered_rps']:.0f}/s) p50 {s['half_rate_p50_ms']} "
        f"p99 {s['half_rate_p99_ms']} ms"
    )
    cpu = s["cpu_us_per_req"]
    print(
        f"median CPU µs/req: bare {_cpu_line(cpu['bare'])}, bridge {_cpu_line(cpu['bridge'])}; "
        f"cpu ratio {s['cpu_ratio']:.2f}"
    )
    print(
        f"peak RSS: web process {s['web_process_peak_rss_mb']} MB, "
        f"web dyno {s['web_dyno_peak_rss_mb']} MB"
    )
    print("targets:", json.dumps(s["targets"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
