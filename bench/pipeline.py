"""End-to-end bench: webhook in -> call accepted by a loopback Pipelines stand-in, W workers.

    .venv/bin/python bench/pipeline.py [--webhooks 4000] [--workers 1] [--rate 200] [--json]

Phases, all against real processes (redis-server, gunicorn as the Procfile runs it, W `bridge
worker` processes, the stand-in in its own process):
1. throughput, stand-in answering at once and then with 80 ms added to every response: N
   webhooks are posted while no worker runs, then W workers start; the clock runs from the
   moment all W are registered to the last call the stand-in accepts. Reports webhooks/s,
   events/s, events/s per worker process, Pipelines requests per 100 events.
2. the official `customerio-cdp-analytics` client (upload_size=100, a queue big enough to drop
   nothing) sends the very calls of phase 1 to the same stand-in, with and without the 80 ms,
   in a process of its own; the clock runs from the first call handed to it until flush()
   returns.
3. latency: workers running, webhooks offered open loop at --rate per second; each accepted
   call is matched to its webhook by the fresh ids the generator put in it (cart, checkout,
   order, customer), and latency = stand-in received_at - the driver's send time.
Peak RSS (VmHWM) of every web and worker process, and per dyno, is read before they stop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import redis as redis_lib

from bench.common import (
    MIXES,
    ROOT,
    WRITE_KEY,
    Service,
    WebhookFactory,
    machine,
    percentile,
    run_py_driver,
    service_env,
    services,
    standin_stats,
    start_redis,
    start_standin,
    start_web,
    start_workers,
    stop_standin,
    tree_rss,
)


def _wait_registered(client: redis_lib.Redis, n: int, timeout_s: float = 60.0) -> float:
    """Wall time at which `n` RQ workers are registered (ready to take jobs)."""
    from rq import Worker

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(Worker.all(connection=client)) >= n:
            return time.time()
        time.sleep(0.01)
    raise RuntimeError("workers did not register")


def _drained(client: redis_lib.Redis) -> bool:
    shops = [s.decode() for s in client.smembers("cb:shops")]
    pipe = client.pipeline(transaction=False)
    for shop in shops:
        for suffix in ("in", "in:work", "out", "out:work"):
            pipe.llen(f"cb:{{{shop}}}:{suffix}")
    return not any(pipe.execute())


def _wait_done(client: redis_lib.Redis, standin: Service, timeout_s: float) -> None:
    """Until every queue is empty and the stand-in has stopped receiving."""
    deadline = time.monotonic() + timeout_s
    last = -1
    while time.monotonic() < deadline:
        if _drained(client):
            calls = standin_stats(standin)["calls"]
            if calls == last:
                return
            last = calls
            time.sleep(0.3)
        else:
            time.sleep(0.02)
    raise RuntimeError("pipeline did not drain in time")


def _stop_all(workers: list[Service]) -> list[dict[str, Any]]:
    rss = [tree_rss(w.pid) for w in workers]
    for w in workers:
        w.proc.terminate()
    for w in workers:
        w.stop()
    return rss


def throughput(
    args: argparse.Namespace, web: Service, redis_url: str, delay_ms: float, seed: int, tmp: Path
) -> dict[str, Any]:
    client = redis_lib.Redis.from_url(redis_url)
    client.flushall()
    standin = start_standin(delay_ms, str(tmp / f"records-{seed}-{delay_ms}.json"))
    workers: list[Service] = []
    try:
        posted = run_py_driver(
            web.port,
            concurrency=8,
            count=args.webhooks,
            seed=seed,
            shops=args.shops,
            mix=args.mix,
        )
        env = service_env(redis_url, standin.url)
        workers = start_workers(args.workers, env)
        t0 = _wait_registered(client, args.workers)
        _wait_done(client, standin, args.timeout)
        stats = standin_stats(standin)
        worker_rss = _stop_all(workers)
    finally:
        for w in workers:
            w.stop()
        records = stop_standin(standin)
    if not records:
        raise RuntimeError("the stand-in accepted no calls")
    t_end = max(r["t"] for r in records)
    secs = max(t_end - t0, 1e-6)
    events = len(records)
    return {
        "delay_ms": delay_ms,
        "webhooks_posted": posted["ok"],
        "seconds": round(secs, 3),
        "webhooks_per_s": round(posted["ok"] / secs, 1),
        "events": events,
        "events_per_s": round(events / secs, 1),
        "events_per_s_per_worker": round(events / secs / args.workers, 1),
        "requests": stats["requests"],
        "requests_per_100_events": round(100 * stats["requests"] / events, 2),
        "worker_rss": worker_rss,
        "calls": [r["call"] for r in records],
    }


def _client_main(args: argparse.Namespace) -> int:
    """Send calls (JSON list) with the official client; print {"sent", "seconds"} as JSON."""
    from customerio import analytics

    calls = orjson.loads(Path(args.calls).read_bytes())
    errors: list[str] = []
    client = analytics.Client(
        WRITE_KEY,
        host=args.host,
        upload_size=100,
        max_queue_size=len(calls) + 1,
        on_error=lambda e, batch: errors.append(type(e).__name__),
    )

    def ts(raw: str | None) -> datetime | None:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")) if raw else None

    t0 = time.monotonic()
    for c in calls:
        common = {
            "user_id": c.get("userId"),
            "anonymous_id": c.get("anonymousId"),
            "context": c.get("context"),
            "timestamp": ts(c.get("timestamp")),
            "message_id": c.get("messageId"),
        }
        if c.get("type") == "identify":
            client.identify(traits=c.get("traits"), **common)
        else:
            client.track(event=c.get("event"), properties=c.get("properties"), **common)
    client.flush()
    secs = time.monotonic() - t0
    client.join()
    print(json.dumps({"sent": len(calls), "seconds": round(secs, 3), "errors": len(errors)}))
    return 0


def client_baseline(calls: list[dict[str, Any]], delay_ms: float, tmp: Path) -> dict[str, Any]:
    path = tmp / f"client-calls-{delay_ms}.json"
    path.write_bytes(orjson.dumps(calls))
    standin = start_standin(delay_ms, str(tmp / f"client-records-{delay_ms}.json"))
    try:
        out = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "client",
                "--calls",
                str(path),
                "--host",
                standin.url.removesuffix("/v1"),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
        stats = standin_stats(standin)
    finally:
        records = stop_standin(standin)
    res = json.loads(out.strip().splitlines()[-1])
    received = len(records)
    return {
        "delay_ms": delay_ms,
        "sent": res["sent"],
        "received": received,
        "seconds": res["seconds"],
        "events_per_s": round(received / res["seconds"], 1) if res["seconds"] else 0.0,
        "requests_per_100_events": round(100 * stats["requests"] / max(received, 1), 2),
    }


def _marker(call: dict[str, Any], index: dict[str, int]) -> int | None:
    props = call.get("properties") or {}
    for v in (
        props.get("order_id"),
        props.get("checkout_id"),
        props.get("cart_id"),
        call.get("userId"),
    ):
        if v is not None and str(v) in index:
            return index[str(v)]
    return None


def latency(
    args: argparse.Namespace, web: Service, redis_url: str, delay_ms: float, seed: int, tmp: Path
) -> dict[str, Any]:
    client = redis_lib.Redis.from_url(redis_url)
    client.flushall()
    standin = start_standin(delay_ms, str(tmp / f"lat-records-{seed}.json"))
    workers: list[Service] = []
    posts_path = tmp / f"posts-{seed}.json"
    try:
        workers = start_workers(args.workers, service_env(redis_url, standin.url))
        _wait_registered(client, args.workers)
        posted = run_py_driver(
            web.port,
            concurrency=16,
            rate=args.rate,
            duration_s=args.latency_duration,
            seed=seed,
            shops=args.shops,
            posts_out=str(posts_path),
        )
        _wait_done(client, standin, args.timeout)
        worker_rss = _stop_all(workers)
    finally:
        for w in workers:
            w.stop()
        records = stop_standin(standin)
    sent_at = dict(orjson.loads(posts_path.read_bytes()))
    total = int(args.rate * args.latency_duration)
    factory = WebhookFactory(seed=seed, shops=args.shops)
    index: dict[str, int] = {}
    for i in range(total):
        for m in factory.make().markers:
            index[m] = i
    lat = []
    for r in records:
        i = _marker(r["call"], index)
        if i is not None and i in sent_at:
            lat.append((r["t"] - sent_at[i]) * 1000)
    return {
        "delay_ms": delay_ms,
        "offered_per_s": args.rate,
        "webhooks_accepted": posted["ok"],
        "web_p99_ms": posted["p99_ms"],
        "events": len(records),
        "events_matched": len(lat),
        "p50_ms": round(percentile(lat, 50), 1),
        "p99_ms": round(percentile(lat, 99), 1),
        "max_ms": round(max(lat), 1) if lat else 0.0,
        "worker_rss": worker_rss,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="cb-bench-pipeline-"))
    runs = []
    with services() as started:
        redis_svc = start_redis()
        started.append(redis_svc)
        web = start_web(service_env(redis_svc.url), workers=2)
        started.append(web)
        for i in range(args.runs):
            seed = 1000 * (i + 1)
            fast = throughput(args, web, redis_svc.url, 0.0, seed + 1, tmp)
            calls = fast.pop("calls")
            client_fast = client_baseline(calls, 0.0, tmp)
            if args.throughput_only:
                # The ratio alone (profiling the order path): the same fast phase as a stand-in
                # for the delayed and latency phases, so the summary keeps its shape.
                slow, client_slow, lat = fast, client_fast, None
            else:
                slow = throughput(args, web, redis_svc.url, args.delay_ms, seed + 2, tmp)
                slow.pop("calls")
                client_slow = client_baseline(calls, args.delay_ms, tmp)
                lat = latency(args, web, redis_svc.url, 0.0, seed + 3, tmp)
            runs.append(
                {
                    "bridge": fast,
                    "bridge_delayed": slow,
                    "client": client_fast,
                    "client_delayed": client_slow,
                    "latency": lat,
                    "ratio_per_worker_vs_client": round(
                        fast["events_per_s_per_worker"] / client_fast["events_per_s"], 3
                    )
                    if client_fast["events_per_s"]
                    else 0.0,
                }
            )
        web_rss = tree_rss(web.pid)

    def med(a: str, b: str) -> float:
        return round(statistics.median(float(r[a][b]) for r in runs), 2)

    worker_peak = max(
        w["main_mb"]
        for r in runs
        for k in ("bridge", "bridge_delayed", "latency")
        if r[k] is not None
        for w in r[k]["worker_rss"]
    )
    worker_dyno = max(
        w["total_mb"]
        for r in runs
        for k in ("bridge", "bridge_delayed", "latency")
        if r[k] is not None
        for w in r[k]["worker_rss"]
    )
    summary = {
        "webhooks_per_s": med("bridge", "webhooks_per_s"),
        "events_per_s": med("bridge", "events_per_s"),
        "events_per_s_per_worker": med("bridge", "events_per_s_per_worker"),
        "requests_per_100_events": med("bridge", "requests_per_100_events"),
        "delayed_events_per_s_per_worker": med("bridge_delayed", "events_per_s_per_worker"),
        "delayed_requests_per_100_events": med("bridge_delayed", "requests_per_100_events"),
        "client_events_per_s": med("client", "events_per_s"),
        "client_delayed_events_per_s": med("client_delayed", "events_per_s"),
        "client_requests_per_100_events": med("client", "requests_per_100_events"),
        "ratio_per_worker_vs_client": round(
            statistics.median(r["ratio_per_worker_vs_client"] for r in runs), 3
        ),
        "latency_p50_ms": None if args.throughput_only else med("latency", "p50_ms"),
        "latency_p99_ms": None if args.throughput_only else med("latency", "p99_ms"),
        "web_process_peak_rss_mb": max(web_rss["children_mb"] or [0.0]),
        "web_dyno_peak_rss_mb": web_rss["total_mb"],
        "worker_process_peak_rss_mb": worker_peak,
        "worker_dyno_peak_rss_mb": worker_dyno,
    }
    summary["targets"] = {
        "per_worker_ge_client": summary["ratio_per_worker_vs_client"] >= 1.0,
        "delayed_ge_1000_per_worker": summary["delayed_events_per_s_per_worker"] >= 1000,
        "p99_lt_500ms_at_rate": None
        if summary["latency_p99_ms"] is None
        else summary["latency_p99_ms"] < 500,
        "web_rss_lt_80mb": summary["web_process_peak_rss_mb"] < 80,
        "worker_rss_lt_100mb": worker_peak < 100,
    }
    return {
        "bench": "pipeline",
        "machine": machine(),
        "params": {k: v for k, v in vars(args).items() if k != "cmd"},
        "summary": summary,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["client"]:
        c = argparse.ArgumentParser()
        c.add_argument("--calls", required=True)
        c.add_argument("--host", required=True)
        return _client_main(c.parse_args(argv[1:]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--webhooks", type=int, default=4000, help="per throughput phase")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="W worker processes (default 1: like the client's one process, it has a core of "
        "its own beside Redis and the stand-in on a 2-core machine; more share the cores)",
    )
    p.add_argument("--shops", type=int, default=4)
    p.add_argument(
        "--mix",
        choices=sorted(MIXES),
        default="shop",
        help="shop: the cart-heavy topic mix; orders: orders/paid only, 8 line items each",
    )
    p.add_argument(
        "--throughput-only",
        action="store_true",
        help="only the fast throughput phase and its client baseline (no delayed, no latency)",
    )
    p.add_argument("--delay-ms", type=float, default=80.0, help="stand-in delay, slow phase")
    p.add_argument("--rate", type=float, default=200.0, help="offered webhooks/s, latency phase")
    p.add_argument("--latency-duration", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        print(json.dumps(out))
        return 0
    s, m = out["summary"], out["machine"]
    print(f"machine: {m['nproc']} cpu, {m['cpu']}, {m['mem_gb']} GB; W={args.workers}")
    for i, r in enumerate(out["runs"], 1):
        b, bd, c, cd, lat = (
            r[k] for k in ("bridge", "bridge_delayed", "client", "client_delayed", "latency")
        )
        print(
            f"run {i}: bridge {b['webhooks_per_s']:.0f} webhooks/s, {b['events_per_s']:.0f} "
            f"events/s ({b['events_per_s_per_worker']:.0f}/worker), "
            f"{b['requests_per_100_events']} req/100 ev | +{args.delay_ms:.0f} ms: "
            f"{bd['events_per_s_per_worker']:.0f}/worker | client {c['events_per_s']:.0f} ev/s "
            f"(+{args.delay_ms:.0f} ms: {cd['events_per_s']:.0f}), "
            f"received {c['received']}/{c['sent']}, ratio {r['ratio_per_worker_vs_client']}"
            + (
                f" | e2e at {args.rate:.0f}/s p50 {lat['p50_ms']} p99 {lat['p99_ms']} ms "
                f"({lat['events_matched']}/{lat['events']})"
                if lat
                else ""
            )
        )
    print("median:", json.dumps({k: v for k, v in s.items() if k != "targets"}))
    print("targets:", json.dumps(s["targets"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
