"""Redis Cluster bench (issue 19): many shops spread over the masters; one shop's ceiling.

    .venv/bin/python bench/cluster.py [--webhooks 3000] [--shops 200] [--workers 2]
                                      [--one-shop 2000] [--runs 1] [--json]

Real processes throughout: gunicorn as the Procfile runs it, `bridge worker` processes, the
Pipelines stand-in in its own process; the bridge's data on a private single redis-server or on
a private three-master cluster (tests/redis_cluster.py, DATA_REDIS_URL), RQ's queues on a plain
redis-server (REDIS_URL) in both.

1. spread: `--webhooks` webhooks naming `--shops` shops are posted while no worker runs, then
   `--workers` workers deliver them. Around the whole run (posting, draining, delivering), each
   data node's CPU (INFO CPU, used_cpu_user + used_cpu_sys) and commands (INFO commandstats)
   are read: the busiest master's CPU per event (call delivered) is what bounds throughput
   when Redis is the bottleneck, and it falls with the number of masters the shops spread
   over. A 2-core machine cannot drive three masters to saturation, so the bench reports the
   per-event cost of the busiest one rather than a saturated rate.
2. one shop: `--one-shop` webhooks of a single shop are posted with no worker running, then 1
   and then 4 workers process them (each on a fresh cluster): webhooks per second drained, from
   the first poll of Redis that finds the shop's queue shorter to the first that finds it empty
   (`DrainClock`; delivery runs beside it). A shop's drain runs one batch at a time (its
   lease), so more workers add little: the per-shop ceiling.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis as redis_lib
from redis.cluster import RedisCluster

from bench.common import (
    WebhookFactory,
    machine,
    run_py_driver,
    service_env,
    services,
    standin_stats,
    start_redis,
    start_standin,
    start_web,
    start_workers,
    stop_standin,
)
from bridge.store.keys import Keys
from tests.redis_cluster import LocalCluster


def cpu_and_commands(port: int) -> tuple[float, int]:
    """A node's CPU seconds (user + sys) and commands run so far."""
    r = redis_lib.Redis(port=port, socket_timeout=5)
    cpu = r.info("cpu")
    stats = r.info("commandstats")
    commands = sum(int(v["calls"]) for v in stats.values())
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), commands


@contextmanager
def data_store(masters: int) -> Iterator[tuple[str, list[int]]]:
    """(DATA_REDIS_URL, data node ports): "" and the plain Redis for a single Redis."""
    if masters == 1:
        yield "", []
    else:
        with LocalCluster(masters) as cluster:
            yield cluster.url, cluster.ports


def wait_settled(standin: Any, quiet_s: float = 2.0) -> int:
    """The stand-in's call count once calls came and then stopped for `quiet_s`."""
    last, since = 0, time.monotonic()
    while True:
        n = int(standin_stats(standin)["calls"])
        if n != last:
            last, since = n, time.monotonic()
        elif n and time.monotonic() - since >= quiet_s:
            return n
        time.sleep(0.2)


class DrainClock:
    """Times one shop's drain from Redis: from the first poll that finds fewer than `total`
    webhooks waiting (inbound queue + work list) to the first that finds none (polls every
    5 ms on a thread of its own)."""

    def __init__(self, client: Any, shop: str, total: int) -> None:
        self.client = client
        self.keys = Keys(shop)
        self.total = total
        self.start = self.end = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _waiting(self) -> int:
        return int(self.client.llen(self.keys.inbound)) + int(
            self.client.llen(self.keys.inbound_work)
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            left, at = self._waiting(), time.monotonic()
            if not self.start and left < self.total:
                self.start = at
            if self.start and left == 0:
                self.end = at
                return
            time.sleep(0.005)

    def rate(self) -> float | None:
        self._stop.set()
        self._thread.join(5)
        span = self.end - self.start
        return round(self.total / span, 1) if self.start and self.end and span > 0 else None


def run_topology(masters: int, args: argparse.Namespace, *, shops: int, webhooks: int,
                 workers: int) -> dict[str, Any]:  # fmt: skip
    """Post `webhooks` over `shops` shops, deliver them with `workers` workers; what the data
    nodes spent and how fast the stand-in received the calls."""
    with services() as started, data_store(masters) as (data_url, ports):
        rq_redis = start_redis()
        started.append(rq_redis)
        ports = ports or [rq_redis.port]
        records = tempfile.mktemp(prefix="cb-bench-cluster-", suffix=".json")
        standin = start_standin(0.0, records)
        started.append(standin)
        extra = {"DATA_REDIS_URL": data_url} if data_url else {}
        env = service_env(rq_redis.url, standin.url, LOG_LEVEL="WARNING", **extra)
        web = start_web(env)
        started.append(web)
        before = {p: cpu_and_commands(p) for p in ports}
        posted = run_py_driver(web.port, concurrency=8, count=webhooks, shops=shops, seed=args.seed)
        clock = None
        if shops == 1:
            data = (
                RedisCluster.from_url(data_url)
                if data_url
                else redis_lib.Redis.from_url(rq_redis.url)
            )
            shop = WebhookFactory(seed=args.seed, shops=1).shops[0]
            clock = DrainClock(data, shop, webhooks)
        started.extend(start_workers(workers, env))
        calls = wait_settled(standin)
        after = {p: cpu_and_commands(p) for p in ports}
        for svc in started[3:]:
            svc.stop()
        stop_standin(standin)
        drain_rate = clock.rate() if clock else None
    cpu = {p: after[p][0] - before[p][0] for p in ports}
    commands = {p: after[p][1] - before[p][1] for p in ports}
    busiest = max(ports, key=lambda p: cpu[p])
    return {
        "masters": masters,
        "shops": shops,
        "workers": workers,
        "webhooks_posted": int(posted.get("ok", posted.get("requests", webhooks))),
        "events": calls,
        "busiest_cpu_us_per_event": round(cpu[busiest] / max(calls, 1) * 1e6, 1),
        "all_masters_cpu_us_per_event": round(sum(cpu.values()) / max(calls, 1) * 1e6, 1),
        "busiest_share_of_commands": round(commands[busiest] / max(sum(commands.values()), 1), 3),
        "commands_per_event": round(sum(commands.values()) / max(calls, 1), 1),
        # one shop: webhooks/s of its drain, from the queue's first decrease to its end
        "drain_webhooks_per_s": drain_rate,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--webhooks", type=int, default=3000, help="spread phase, in all")
    p.add_argument("--shops", type=int, default=200)
    p.add_argument("--workers", type=int, default=2, help="spread phase")
    p.add_argument("--one-shop", type=int, default=2000, help="webhooks of the one-shop phase")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    spread: list[dict[str, Any]] = []
    one_shop: list[dict[str, Any]] = []
    for _ in range(args.runs):
        for masters in (1, 3):  # alternating
            spread.append(
                run_topology(
                    masters, args, shops=args.shops, webhooks=args.webhooks, workers=args.workers
                )
            )
            print(json.dumps(spread[-1]), file=sys.stderr, flush=True)
        for workers in (1, 4):
            one_shop.append(run_topology(3, args, shops=1, webhooks=args.one_shop, workers=workers))
            print(json.dumps(one_shop[-1]), file=sys.stderr, flush=True)
    result = {"machine": machine(), "spread": spread, "one_shop": one_shop}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"machine: {result['machine']}")
    print("spread over the masters (busiest master's Redis CPU per event, µs):")
    for masters in (1, 3):
        rows = [r for r in spread if r["masters"] == masters]
        figures = ", ".join(str(r["busiest_cpu_us_per_event"]) for r in rows)
        share = statistics.median(r["busiest_share_of_commands"] for r in rows)
        print(
            f"  {masters} master(s): busiest {figures}; all masters "
            f"{', '.join(str(r['all_masters_cpu_us_per_event']) for r in rows)}; "
            f"busiest's share of commands {share}; events {rows[0]['events']}"
        )
    print("one shop (webhooks/s drained, from the queue's first decrease to its end):")
    for workers in (1, 4):
        rows = [r for r in one_shop if r["workers"] == workers]
        print(f"  {workers} worker(s): {', '.join(str(r['drain_webhooks_per_s']) for r in rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
