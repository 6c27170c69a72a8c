"""What one shopper journey costs Redis: commands, bytes on the wire, memory kept.

    .venv/bin/python bench/redis_cost.py [--journeys 300] [--workers 1] [--json]

A journey is the six webhooks of one purchase, all naming the same cart, checkout, order and
customer: `carts/create`, `carts/update` (a second line), `checkouts/create` (no contact yet),
`checkouts/update` (with the contact), `orders/create`, `orders/paid`. Real processes throughout
(redis-server, gunicorn as the Procfile runs it, `bridge worker`, the Pipelines stand-in).

Three load levels, each on a fresh Redis:
- light: workers running, journeys posted one webhook at a time with a pause between them, so
  every drain finds one webhook waiting;
- burst: workers running, journeys posted by 8 concurrent senders as fast as they go;
- backlog: every webhook posted while no worker runs, then the workers start.

Redis's own counters, reset before the webhooks and read once everything was delivered (the
stand-in's call count stopped moving and every queue is empty):
- commands: the sum of INFO commandstats calls (commands scripts run included), less the
  bench's own reads (INFO, CONFIG, and the queue checks it counts itself), per journey;
- bytes: INFO stats total_net_input_bytes + total_net_output_bytes, per journey (this includes
  RQ's wake-up jobs and the web's and workers' replies);
- state: MEMORY USAGE of the journeys' shop state records (`st:*`) and dedupe markers
  (`claim:*`, `seen:*`) once they are written, per journey, and how many markers a journey leaves.
While waiting it asks only the stand-in (HTTP), never Redis, so the counts are the bridge's.
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import re
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

import orjson
import redis as redis_lib

from bench.common import (
    FIXTURES,
    SECRET,
    TRIGGERED_AT,
    Service,
    machine,
    service_env,
    standin_stats,
    start_redis,
    start_standin,
    start_web,
    start_workers,
    stop_standin,
)
from bridge import signature

SHOP = "journeys.myshopify.com"
TOPICS = (
    "carts/create",
    "carts/update",
    "checkouts/create",
    "checkouts/update",
    "orders/create",
    "orders/paid",
)
# INFO and CONFIG are the bench's; everything else is the bridge's (web, workers, RQ).
BENCH_COMMANDS = ("info", "config")


def _fixture(name: str) -> dict[str, Any]:
    return dict(orjson.loads((FIXTURES / f"{name}.json").read_bytes()))


class Journeys:
    """Signed webhooks of `n` journeys, each with ids of its own."""

    def __init__(self) -> None:
        self.cart = _fixture("carts-create")
        self.checkout = _fixture("checkouts-update")
        self.order = _fixture("orders-create")

    def webhooks(self, j: int) -> list[tuple[str, bytes]]:
        token = f"journey-cart-{j}"
        co_token = f"journey-co-{j}"
        co_id = 8_000_000_000_000 + j
        order_id = 9_000_000_000_000 + j
        customer_id = 7_000_000_000_000 + j
        email = f"shopper{j}@example.com"
        at = "2026-11-27T10:00:00Z"
        cart = copy.deepcopy(self.cart)
        cart.update(id=token, token=token, created_at=at, updated_at=at)
        line = cart["line_items"][0]
        more = copy.deepcopy(cart)
        second = {**copy.deepcopy(line), "variant_id": 4242, "id": 4242, "key": "4242:1"}
        more["line_items"] = [line, second]
        more["updated_at"] = "2026-11-27T10:01:00Z"
        co = copy.deepcopy(self.checkout)
        co.update(id=co_id, token=co_token, cart_token=token, created_at=at)
        co.update(updated_at="2026-11-27T10:02:00Z")
        anonymous = {**co, "email": None, "customer": None, "updated_at": at}
        customer = dict(co.get("customer") or {})
        customer.update(id=customer_id, email=email)
        co.update(email=email, customer=customer)
        order = copy.deepcopy(self.order)
        order.update(id=order_id, cart_token=token, checkout_token=co_token, checkout_id=co_id)
        order.update(email=email, contact_email=email, test=False)
        order["customer"] = {**dict(order.get("customer") or {}), "id": customer_id, "email": email}
        paid = {**order, "financial_status": "paid"}
        bodies = [cart, more, anonymous, co, order, paid]
        return [(topic, orjson.dumps(body)) for topic, body in zip(TOPICS, bodies, strict=True)]


def post(conn: http.client.HTTPConnection, topic: str, body: bytes) -> None:
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": SHOP,
        "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        "X-Shopify-Triggered-At": TRIGGERED_AT,
        "X-Shopify-Hmac-Sha256": signature.sign(body, SECRET.encode()),
    }
    for attempt in range(5):
        try:
            conn.request("POST", "/webhooks/shopify", body, headers)
            resp = conn.getresponse()
            answer = resp.read()
            if resp.status == 200 and answer == b'{"ok":true}':
                return
            # Anything else (stale, ignored, refused) would make the count meaningless.
            raise RuntimeError(f"{topic}: {resp.status} {answer!r}")
        except (OSError, http.client.HTTPException):
            conn.close()
            time.sleep(0.05 * (attempt + 1))
    raise RuntimeError(f"{topic}: not accepted")


def send(
    web: Service, journeys: list[list[tuple[str, bytes]]], senders: int, pause_s: float
) -> None:
    """Post every journey's webhooks in order, journeys spread over `senders` threads."""
    errors: list[BaseException] = []

    def run(mine: list[list[tuple[str, bytes]]]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
        try:
            for hooks in mine:
                for topic, body in hooks:
                    post(conn, topic, body)
                    if pause_s:
                        time.sleep(pause_s)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(journeys[i::senders],)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _wait_delivered(standin: Service, timeout_s: float, quiet_s: float = 2.0) -> None:
    """Until the stand-in's call count stops moving for `quiet_s` (asks the stand-in only)."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        calls = standin_stats(standin)["calls"]
        if calls != last:
            last, since = calls, time.monotonic()
        elif calls > 0 and time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.2)
    raise RuntimeError("deliveries did not settle in time")


def _commands(client: redis_lib.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def _redis_cpu_s(client: redis_lib.Redis) -> float:
    """CPU seconds Redis's main thread has used (user + system): what its one core spends."""
    cpu = client.info("cpu")
    user = cpu.get("used_cpu_user_main_thread", cpu["used_cpu_user"])
    system = cpu.get("used_cpu_sys_main_thread", cpu["used_cpu_sys"])
    return float(user) + float(system)


def _state_bytes(client: redis_lib.Redis) -> tuple[int, int, int]:
    """(bytes of state records, bytes of dedupe markers, dedupe markers) under the shop: the
    claims the web sets as it queues (`claim:*`) and the seen-markers commits set (`seen:*`)."""
    state = seen = markers = 0
    for key in client.scan_iter(f"cb:{{{SHOP}}}:st:*", count=1000):
        state += int(client.memory_usage(key) or 0)
    for pattern in (f"cb:{{{SHOP}}}:seen:*", f"cb:{{{SHOP}}}:claim:*"):
        for key in client.scan_iter(pattern, count=1000):
            seen += int(client.memory_usage(key) or 0)
            markers += 1
    return state, seen, markers


def run_level(level: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    redis_svc = start_redis()
    client = redis_lib.Redis.from_url(redis_svc.url)
    standin = start_standin(0, str(tmp / f"records-{level}.json"))
    env = service_env(redis_svc.url, standin.url)
    web = start_web(env, workers=2)
    workers: list[Service] = []
    factory = Journeys()
    journeys = [factory.webhooks(j) for j in range(args.journeys)]
    try:
        if level != "backlog":
            workers = start_workers(args.workers, env)
            time.sleep(3)  # registered and idle before the count starts
        cpu_before = _redis_cpu_s(client)
        watcher = KeyWatcher(redis_svc.url) if args.by_key else None
        client.config_resetstat()
        if level == "light":
            send(web, journeys, senders=1, pause_s=args.light_pause_ms / 1000)
        else:
            send(web, journeys, senders=8, pause_s=0)
        if level == "backlog":
            workers = start_workers(args.workers, env)
        _wait_delivered(standin, args.timeout)
        commands = _commands(client)
        cpu_s = _redis_cpu_s(client) - cpu_before
        by_key = watcher.stop() if watcher is not None else {}
        net = client.info("stats")
        # The one queue check the bench makes, counted and taken off below.
        pipe = client.pipeline(transaction=False)
        for suffix in ("in", "in:work", "out", "out:work"):
            pipe.llen(f"cb:{{{SHOP}}}:{suffix}")
        if any(pipe.execute()):
            raise RuntimeError(f"{level}: queues not empty once deliveries settled")
        state, seen, markers = _state_bytes(client)
        calls = standin_stats(standin)["calls"]
    finally:
        for w in workers:
            w.stop()
        web.stop()
        stop_standin(standin)
        redis_svc.stop()
    bridge = {k: v for k, v in commands.items() if k not in BENCH_COMMANDS}
    total = sum(bridge.values())
    n = args.journeys
    top = sorted(bridge.items(), key=lambda kv: -kv[1])[:30]
    return {
        "level": level,
        "journeys": n,
        "calls_delivered": calls,
        "commands_per_journey": round(total / n, 1),
        # Includes the idle server's own cron over the level's wall time (small beside the
        # work, except at light load, where most of the wall time is the senders' pauses).
        "redis_cpu_us_per_journey": round(cpu_s * 1e6 / n, 1),
        "top_commands_per_journey": {k: round(v / n, 1) for k, v in top},
        "wire_bytes_per_journey": round(
            (int(net["total_net_input_bytes"]) + int(net["total_net_output_bytes"])) / n
        ),
        "state_bytes_per_journey": round(state / n),
        "seen_marker_bytes_per_journey": round(seen / n),
        "seen_markers_per_journey": round(markers / n, 2),
        **(
            {"by_key_per_journey": {k: round(v / n, 1) for k, v in by_key.items() if v / n >= 0.5}}
            if args.by_key
            else {}
        ),
    }


# A key's variable parts (ids, hashes, numbers) folded so that keys of one kind count together.
_VARIABLE = re.compile(r"(?<=[:_{])[^:{}]*\d[^:{}]*|(?<=:)[0-9a-f]{12,}")


class KeyWatcher:
    """MONITOR in a thread: commands counted by name and key kind (`--by-key`), to see what
    each command total is made of (scripts' inner commands are shown by MONITOR too). MONITOR
    slows Redis down: figures from a run with it are for the breakdown, not the totals."""

    def __init__(self, url: str) -> None:
        self.counts: dict[str, int] = {}
        self._client = redis_lib.Redis.from_url(url)
        self._monitor = self._client.monitor()
        self._conn = self._monitor.__enter__()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._conn.listen():
                parts = str(event.get("command", "")).split(" ")
                name = parts[0].upper()
                key = _VARIABLE.sub("*", parts[1].strip('"')) if len(parts) > 1 else ""
                label = f"{name} {key}" if name not in ("EVALSHA", "EVAL") else name
                self.counts[label] = self.counts.get(label, 0) + 1
        except Exception:  # the connection closed by stop()
            return

    def stop(self) -> dict[str, int]:
        self._client.connection_pool.disconnect()
        with contextlib.suppress(Exception):
            self._monitor.__exit__(None, None, None)
        self._thread.join(timeout=5)
        return dict(sorted(self.counts.items(), key=lambda kv: -kv[1])[:60])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--journeys", type=int, default=300)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--light-pause-ms", type=float, default=20.0)
    p.add_argument("--levels", default="light,burst,backlog")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--by-key", action="store_true", help="also count commands by key kind (MONITOR)"
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        results = [run_level(level, args, Path(d)) for level in args.levels.split(",")]
    report = {"machine": machine(), "results": results}
    if args.json:
        print(json.dumps(report))
        return 0
    for r in results:
        print(
            f"{r['level']:8} {r['commands_per_journey']:6} commands/journey "
            f"{r['wire_bytes_per_journey']:7} wire bytes/journey "
            f"{r['state_bytes_per_journey']:6} state bytes/journey "
            f"{r['seen_markers_per_journey']} seen markers/journey "
            f"{r['redis_cpu_us_per_journey']} Redis CPU us/journey  "
            f"top: {r['top_commands_per_journey']}"
        )
        for label, n in r.get("by_key_per_journey", {}).items():
            print(f"    {n:7} {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
