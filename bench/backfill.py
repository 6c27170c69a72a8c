"""Backfill bench: `bridge backfill file` over a synthetic bulk JSONL, live orders meanwhile.

    .venv/bin/python bench/backfill.py [--orders 1000000] [--workers 1] [--json]

1. A bulk JSONL in the shape Shopify writes for the bridge's export is generated on disk,
   streaming (never held in memory): orders with 1-4 line items, one in ten with a refund with
   its refund lines and transaction; child lines carry `__parentId` and are shuffled within a
   window of lines, so children come before and long after their parent (API 2026-01).
2. Real processes: a private redis-server, the Pipelines stand-in (a process of its own that
   only counts calls and notes when the live orders' calls arrive), gunicorn and W `bridge
   worker` processes as the Procfile runs them.
3. Live latency when idle: a few signed `orders/paid` webhooks, one at a time, webhook posted ->
   its `order_completed` accepted by the stand-in.
4. `bridge backfill file PATH` (identify only) runs as its own process; every few seconds a
   live `orders/paid` for the same shop is posted and its latency measured the same way.
   Reports orders/s (queued by the command; delivered end to end), the command's peak RSS
   (from wait4), the workers' peak RSS, and live latency idle vs during the backfill.
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import redis as redis_lib

from bench.common import (
    FIXTURES,
    PATH,
    ROOT,
    SECRET,
    TRIGGERED_AT,
    WRITE_KEY,
    Service,
    announced_url,
    machine,
    peak_rss_mb,
    service_env,
    start_redis,
    start_web,
    start_workers,
)
from bridge import signature
from bridge.store.facade import Store

SHOP = "bench-backfill.myshopify.com"
WINDOW = 4096  # lines shuffled together: a child may come this far before or after its parent


# --- the synthetic export ----------------------------------------------------------------------


def _money(amount: str) -> dict[str, Any]:
    return {"shopMoney": {"amount": amount, "currencyCode": "USD"}}


def _money2(amount: str) -> dict[str, Any]:
    m = _money(amount)
    m["presentmentMoney"] = m["shopMoney"]
    return m


def order_lines(i: int, rng: random.Random, customers: int) -> list[dict[str, Any]]:
    """One order's JSONL lines (the order, its line items, its refund's children)."""
    oid = 1_000_000_000 + i
    gid = f"gid://shopify/Order/{oid}"
    cust = rng.randrange(customers)
    day = 1 + i % 28
    at = f"2024-{1 + i % 12:02d}-{day:02d}T{i % 24:02d}:00:00Z"
    lines: list[dict[str, Any]] = []
    items = []
    for j in range(rng.randint(1, 4)):
        pid = 500 + rng.randrange(200)
        price = f"{rng.randint(3, 80)}.00"
        items.append(
            {
                "id": f"gid://shopify/LineItem/{oid * 10 + j}",
                "name": f"Product {pid}",
                "title": f"Product {pid}",
                "quantity": 1 + j % 2,
                "sku": f"SKU-{pid}",
                "vendor": "Acme",
                "variant": {"id": f"gid://shopify/ProductVariant/{pid}0"},
                "product": {"id": f"gid://shopify/Product/{pid}", "productType": f"Type {pid % 9}"},
                "originalUnitPriceSet": _money(price),
                "__parentId": gid,
            }
        )
    total = f"{sum(float(li['originalUnitPriceSet']['shopMoney']['amount']) for li in items):.2f}"
    refunds = []
    if i % 10 == 0:
        rid = f"gid://shopify/Refund/{oid}"
        refunds.append(
            {
                "id": rid,
                "legacyResourceId": str(oid),
                "createdAt": at,
                "totalRefundedSet": _money(items[0]["originalUnitPriceSet"]["shopMoney"]["amount"]),
            }
        )
        first = {k: v for k, v in items[0].items() if k != "__parentId"}
        lines.append(
            {
                "id": f"gid://shopify/RefundLineItem/{oid}",
                "quantity": 1,
                "subtotalSet": first["originalUnitPriceSet"],
                "lineItem": first,
                "__parentId": rid,
            }
        )
        lines.append(
            {
                "id": f"gid://shopify/OrderTransaction/{oid}",
                "kind": "REFUND",
                "status": "SUCCESS",
                "amountSet": first["originalUnitPriceSet"],
                "__parentId": rid,
            }
        )
    order = {
        "id": gid,
        "legacyResourceId": str(oid),
        "name": f"#{oid}",
        "email": f"c{cust}@example.com",
        "phone": None,
        "test": False,
        "createdAt": at,
        "processedAt": at,
        "updatedAt": at,
        "cancelledAt": None,
        "closedAt": None,
        "cancelReason": None,
        "currencyCode": "USD",
        "presentmentCurrencyCode": "USD",
        "displayFinancialStatus": "PARTIALLY_REFUNDED" if refunds else "PAID",
        "totalPriceSet": _money2(total),
        "subtotalPriceSet": _money2(total),
        "totalTaxSet": _money("0.00"),
        "totalDiscountsSet": _money("0.00"),
        "totalShippingPriceSet": _money("0.00"),
        "discountCodes": [],
        "customAttributes": [],
        "shippingAddress": {"countryCodeV2": "US"},
        "billingAddress": {"countryCodeV2": "US"},
        "customer": {
            "id": f"gid://shopify/Customer/{cust + 1}",
            "email": f"c{cust}@example.com",
            "phone": None,
            "firstName": "Bench",
            "lastName": f"Customer{cust}",
            "state": "ENABLED",
            "tags": [],
            "createdAt": "2020-01-01T00:00:00Z",
            "updatedAt": "2020-01-01T00:00:00Z",
            "emailMarketingConsent": {"marketingState": "SUBSCRIBED"},
            "smsMarketingConsent": None,
            "defaultAddress": {"countryCodeV2": "US"},
        },
        "refunds": refunds,
    }
    return [order, *items, *lines]


def generate(path: Path, orders: int, seed: int = 13) -> dict[str, Any]:
    """Write the export, streaming; lines shuffled within a sliding window. Returns its size."""
    rng = random.Random(seed)
    customers = max(1, orders // 3)
    window: list[bytes] = []
    started = time.monotonic()
    n_lines = 0
    with path.open("wb", buffering=1 << 20) as fh:
        for i in range(orders):
            for line in order_lines(i, rng, customers):
                window.append(orjson.dumps(line) + b"\n")
                if len(window) >= WINDOW:
                    k = rng.randrange(len(window))
                    window[k], window[-1] = window[-1], window[k]
                    fh.write(window.pop())
                    n_lines += 1
        rng.shuffle(window)
        fh.writelines(window)
        n_lines += len(window)
    return {
        "orders": orders,
        "lines": n_lines,
        "bytes": path.stat().st_size,
        "generate_s": round(time.monotonic() - started, 1),
    }


# --- a counting stand-in ----------------------------------------------------------------------


def _standin_main(args: argparse.Namespace) -> int:
    """The Pipelines stand-in, forgetting calls as it counts them (a million orders' calls
    would otherwise fill its memory); notes when a call about a watched order arrives."""
    from tests.pipelines_standin import PipelinesStandIn

    standin = PipelinesStandIn(write_keys={WRITE_KEY})
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    standin.start()
    print(standin.url, flush=True)
    status = Path(args.status)
    calls = 0
    seen: dict[str, float] = {}
    while not done.wait(0.2):
        # Swapped out under the stand-in's own lock: nothing it accepts meanwhile is lost.
        with standin._lock:
            records, standin._records = standin._records, []
        calls += len(records)
        for r in records:
            props = r.call.get("properties") or {}
            oid = props.get("order_id")
            if r.call.get("event") == "order_completed" and oid and str(oid).startswith("77"):
                seen.setdefault(str(oid), r.received_at)
        tmp = status.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"calls": calls, "seen": seen, "t": time.time()}))
        os.replace(tmp, status)
    standin.stop()
    return 0


def start_counting_standin(status: Path) -> Service:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "standin", "--status", str(status)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    return Service("standin", proc, 0, announced_url(proc), {"status": status})


def standin_status(svc: Service) -> dict[str, Any]:
    path: Path = svc.extra["status"]
    try:
        return dict(orjson.loads(path.read_bytes()))
    except (OSError, ValueError):
        return {"calls": 0, "seen": {}}


# --- live orders ------------------------------------------------------------------------------


class Live:
    """Signed `orders/paid` webhooks with fresh ids, posted to the web process."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.template = orjson.loads((FIXTURES / "orders-paid.json").read_bytes())
        self.n = 0
        self.sent: dict[str, float] = {}

    def post(self) -> str:
        self.n += 1
        oid = 77_000_000 + self.n
        body = copy.deepcopy(self.template)
        body["id"] = oid
        body["test"] = False
        customer = body.get("customer")
        if isinstance(customer, dict):
            customer["id"] = 88_000_000 + self.n
            customer["email"] = f"live{self.n}@example.com"
        raw = orjson.dumps(body)
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": "orders/paid",
            "X-Shopify-Shop-Domain": SHOP,
            "X-Shopify-Webhook-Id": f"live-{oid}",
            "X-Shopify-API-Version": "2026-10",
            "X-Shopify-Triggered-At": TRIGGERED_AT,
            "X-Shopify-Hmac-Sha256": signature.sign(raw, SECRET.encode()),
        }
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.sent[str(oid)] = time.time()
        conn.request("POST", PATH, body=raw, headers=headers)
        resp = conn.getresponse()
        resp.read()
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"live webhook answered {resp.status}")
        return str(oid)

    def latencies_ms(self, seen: dict[str, float], ids: list[str]) -> list[float]:
        return [round((seen[i] - self.sent[i]) * 1000, 1) for i in ids if i in seen]


def _wait(predicate: Any, timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.work_dir or tempfile.mkdtemp(prefix="cb-bench-backfill-"))
    path = Path(args.file) if args.file else workdir / "orders.jsonl"
    export = {"reused": str(path)}
    if not path.is_file():
        export = generate(path, args.orders)
    redis_svc = start_redis()
    standin = start_counting_standin(workdir / "standin.json")
    env = service_env(redis_svc.url, standin.url, LOG_LEVEL="WARNING", SHOPIFY_SHOP=SHOP)
    web = start_web(env, workers=2)
    workers = start_workers(args.workers, env)
    client = redis_lib.Redis.from_url(redis_svc.url)
    live = Live(web.port)
    result: dict[str, Any] = {"machine": machine(), "export": export, "workers": args.workers}
    try:
        _wait(lambda: len(client.keys("rq:worker:*")) >= args.workers, 60)
        idle_ids = []
        for _ in range(args.live):
            oid = live.post()
            idle_ids.append(oid)
            _wait(lambda oid=oid: oid in standin_status(standin)["seen"], 30, 0.02)
        cmd = [
            sys.executable,
            "-m",
            "bridge.cli.main",
            "backfill",
            "file",
            str(path),
            "--rate",
            str(args.rate),
            "--max-backlog",
            str(args.max_backlog),
            "--restart",
        ]
        calls_before = standin_status(standin)["calls"]
        started = time.time()
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        # wait4 gives the command's own peak RSS; a thread waits so live orders go on meanwhile.
        reaped: dict[str, Any] = {}

        def reap() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            reaped.update(code=os.waitstatus_to_exitcode(status), usage=usage)

        waiter = threading.Thread(target=reap)
        waiter.start()
        during_ids = []
        next_live = time.monotonic() + args.live_every_s
        while waiter.is_alive():
            waiter.join(0.05)
            if time.monotonic() >= next_live:
                during_ids.append(live.post())
                next_live = time.monotonic() + args.live_every_s
        queued_s = time.time() - started
        out = proc.stdout.read().decode() if proc.stdout else ""
        store = Store(client)

        def drained() -> bool:
            depth = store.depth(SHOP)
            return depth["inbound"] == 0 and depth["outbox"] == 0

        _wait(drained, 3600, 0.5)
        # Then until the stand-in has seen no new call for two seconds.
        last = -1
        while True:
            now = standin_status(standin)
            if now["calls"] == last:
                break
            last = now["calls"]
            time.sleep(2.0)
        done_s = float(now["t"]) - started - 2.0
        seen = now["seen"]
        idle = live.latencies_ms(seen, idle_ids)
        during = live.latencies_ms(seen, during_ids)
        result.update(
            {
                "command_exit": reaped.get("code"),
                "command_summary": out.strip().splitlines()[-8:],
                "orders_per_s_queued": round(args.orders / queued_s, 1),
                "orders_per_s_delivered": round(args.orders / max(done_s, queued_s), 1),
                "queued_s": round(queued_s, 1),
                "delivered_s": round(max(done_s, queued_s), 1),
                "calls": now["calls"] - calls_before,
                "backfill_peak_rss_mb": round(proc_rss_mb(reaped.get("usage")), 1),
                "worker_peak_rss_mb": [peak_rss_mb(w.pid) for w in workers],
                "live_latency_idle_ms": idle,
                "live_latency_during_ms": during,
                "live_missing": len(during_ids) - len(during),
                "live_during_p50_ms": statistics.median(during) if during else None,
                "live_during_max_ms": max(during) if during else None,
            }
        )
    finally:
        for svc in (*workers, web, standin, redis_svc):
            svc.stop()
        if not args.keep_file and not args.file:
            path.unlink(missing_ok=True)
    return result


def proc_rss_mb(usage: Any) -> float:
    """Peak RSS from wait4's rusage (ru_maxrss is in KB on Linux)."""
    return float(usage.ru_maxrss) / 1024 if usage is not None else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    st = sub.add_parser("standin")
    st.add_argument("--status", required=True)
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rate", type=float, default=100_000.0, help="the backfill's --rate")
    parser.add_argument("--max-backlog", type=int, default=20)
    parser.add_argument("--live", type=int, default=5, help="live orders sent while idle")
    parser.add_argument("--live-every-s", type=float, default=5.0)
    parser.add_argument("--file", help="reuse this export instead of generating one")
    parser.add_argument("--work-dir")
    parser.add_argument("--keep-file", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "standin":
        return _standin_main(args)
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0 if result.get("command_exit") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
