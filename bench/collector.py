"""Browse collector bench: POST /pixel against POST /webhooks/shopify in the same run, and what
one browse event costs Redis.

    .venv/bin/python bench/collector.py [--runs 3] [--duration 5] [--concurrency 8]
                                        [--events 2000] [--json]

Real processes: redis-server, gunicorn as the Procfile runs it (2 workers), and for the cost
part a `bridge worker` and the Pipelines stand-in.

1. Throughput: the same keep-alive driver (threads in this process) drives the webhook endpoint
   (bench.common.WebhookFactory: signed 2-20 KB webhooks, a topic mix) and the collector
   (product_viewed events of distinct browsers, ~1.5 KB, as the shipped pixel posts them)
   alternately for `--duration` seconds each, `--runs` times; no worker runs, so both only
   queue. Prints req/s of each and the ratio collector/webhook per run and the median. The
   rate limits are raised out of the way (one driver address would hit them at once).
2. Redis cost: on a fresh Redis, with a worker running, `--events` browse events as a
   storefront sends them (60 % product_viewed over 50 products, 25 % collection_viewed, off
   by default and so never queued, 15 % product_added_to_cart; 200 browsers), posted by one
   sender with a pause (light: each drain finds one event) and by 8 senders (burst). Redis's
   INFO commandstats is reset before and read once the stand-in's call count stopped moving;
   commands per browse event received and per call forwarded, less the bench's own.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import redis as redis_lib

from bench.common import (
    PATH,
    WebhookFactory,
    machine,
    service_env,
    standin_stats,
    start_redis,
    start_standin,
    start_web,
    start_workers,
    stop_standin,
)
from bench.redis_cost import BENCH_COMMANDS, _commands, _wait_delivered

SHOP = "browse-bench.myshopify.com"
PIXEL = "/pixel"


def variant(product: int) -> dict[str, Any]:
    return {
        "id": f"gid://shopify/ProductVariant/{90000 + product}",
        "title": "Default",
        "untranslatedTitle": "Default",
        "sku": f"SKU-{product}",
        "image": {"src": f"https://cdn.example/{product}.png"},
        "price": {"amount": 19.5 + product, "currencyCode": "USD"},
        "product": {
            "id": f"gid://shopify/Product/{product}",
            "title": f"Product {product}",
            "untranslatedTitle": f"Product {product}",
            "type": "Shoes",
            "vendor": "Acme",
            "url": f"/products/p-{product}",
        },
    }


def pixel_body(name: str, client: str, product: int, cart: str | None = None) -> bytes:
    """A body as the shipped pixel posts it (context cut to the page, arrays trimmed)."""
    if name == "product_viewed":
        data: dict[str, Any] = {"productVariant": variant(product)}
    elif name == "collection_viewed":
        variants = [variant(product + i) for i in range(10)]
        data = {
            "collection": {
                "id": "gid://shopify/Collection/1",
                "title": "All",
                "productVariants": variants,
            }
        }
    else:
        data = {
            "cartLine": {
                "cost": {"totalAmount": {"amount": 20.5, "currencyCode": "USD"}},
                "merchandise": variant(product),
                "quantity": 1,
            }
        }
    event = {
        "id": f"sh-{uuid.uuid4()}",
        "name": name,
        "clientId": client,
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "seq": 3,
        "type": "standard",
        "context": {
            "document": {
                "location": {"href": f"https://{SHOP}/products/p-{product}"},
                "title": f"Product {product}",
            }
        },
        "data": data,
    }
    return orjson.dumps({"shop": SHOP, "cart_token": cart, "event": event})


def _drive(port: int, make: Any, ok: int, concurrency: int, duration_s: float) -> dict[str, Any]:
    """Closed loop: `concurrency` keep-alive connections for `duration_s`; `make(i)` gives
    (path, body, headers) of request i."""
    lock = threading.Lock()
    counter = {"next": 0, "done": 0, "bad": 0}
    deadline = time.monotonic() + duration_s

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < deadline:
            with lock:
                i = counter["next"]
                counter["next"] += 1
            path, body, headers = make(i)
            try:
                conn.request("POST", path, body, headers)
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            with lock:
                counter["done" if resp.status == ok else "bad"] += 1
        conn.close()

    start = time.monotonic()
    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - start
    return {"rps": round(counter["done"] / secs, 1), "errors": counter["bad"]}


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    redis_svc = start_redis()
    env = service_env(
        redis_svc.url,
        SHOPIFY_SHOP=SHOP,
        PIXEL_IP_LIMIT_PER_MIN="100000000",
        PIXEL_CLIENT_LIMIT_PER_MIN="100000000",
        PIXEL_SHOP_LIMIT_PER_MIN="100000000",
        LOG_LEVEL="WARNING",
    )
    web = start_web(env, workers=2)
    factory = WebhookFactory(seed=3)
    hooks = [factory.make() for _ in range(256)]
    bodies = [pixel_body("product_viewed", f"c{i}", i % 50) for i in range(256)]
    plain = {"Content-Type": "text/plain;charset=UTF-8"}
    runs = []
    try:
        for r in range(args.runs):
            run_id = f"r{r}-{time.time_ns()}"

            def webhook(i: int, run_id: str = run_id) -> tuple[str, bytes, dict[str, str]]:
                hook = hooks[i % len(hooks)]
                return PATH, hook.body, hook.headers(f"{run_id}-{i}")

            def pixel(i: int) -> tuple[str, bytes, dict[str, str]]:
                return PIXEL, bodies[i % len(bodies)], plain

            hooked = _drive(web.port, webhook, 200, args.concurrency, args.duration)
            collected = _drive(web.port, pixel, 204, args.concurrency, args.duration)
            ratio = collected["rps"] / hooked["rps"] if hooked["rps"] else 0.0
            runs.append({"webhook": hooked, "collector": collected, "ratio": round(ratio, 2)})
            redis_lib.Redis.from_url(redis_svc.url).flushall()
    finally:
        web.stop()
        redis_svc.stop()
    return {"runs": runs, "median_ratio": round(statistics.median(r["ratio"] for r in runs), 2)}


def storefront(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        client = f"browser-{rng.randrange(200)}"
        product = rng.randrange(50)
        roll = rng.random()
        name = (
            "product_viewed"
            if roll < 0.6
            else "collection_viewed"
            if roll < 0.85
            else "product_added_to_cart"
        )
        out.append(pixel_body(name, client, product))
    return out


def send(port: int, bodies: list[bytes], senders: int, pause_s: float) -> None:
    plain = {"Content-Type": "text/plain;charset=UTF-8"}
    errors: list[str] = []

    def run(mine: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for body in mine:
            conn.request("POST", PIXEL, body, plain)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 204:
                errors.append(str(resp.status))
            if pause_s:
                time.sleep(pause_s)
        conn.close()

    threads = [threading.Thread(target=run, args=(bodies[i::senders],)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"collector refused events: {errors[:5]}")


def cost(level: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    redis_svc = start_redis()
    client = redis_lib.Redis.from_url(redis_svc.url)
    standin = start_standin(0, str(tmp / f"records-{level}.json"))
    env = service_env(
        redis_svc.url,
        standin.url,
        SHOPIFY_SHOP=SHOP,
        PIXEL_IP_LIMIT_PER_MIN="100000000",
        PIXEL_CLIENT_LIMIT_PER_MIN="100000000",
        PIXEL_SHOP_LIMIT_PER_MIN="100000000",
    )
    web = start_web(env, workers=2)
    workers = start_workers(1, env)
    bodies = storefront(args.events)
    try:
        time.sleep(3)  # the worker registered and idle before the count starts
        client.config_resetstat()
        send(
            web.port,
            bodies,
            senders=1 if level == "light" else 8,
            pause_s=0.01 if level == "light" else 0,
        )
        _wait_delivered(standin, 300)
        commands = _commands(client)
        calls = standin_stats(standin)["calls"]
        stats = {k.decode(): int(v) for k, v in client.hgetall(f"cb:{{{SHOP}}}:stats").items()}
    finally:
        for w in workers:
            w.stop()
        web.stop()
        stop_standin(standin)
        redis_svc.stop()
    bridge = {k: v for k, v in commands.items() if k not in BENCH_COMMANDS and k != "hgetall"}
    total = sum(bridge.values())
    top = sorted(bridge.items(), key=lambda kv: -kv[1])[:8]
    browse = {k: v for k, v in stats.items() if k.startswith("browse:")}
    return {
        "level": level,
        "events": args.events,
        "calls_delivered": calls,
        "commands_per_event": round(total / args.events, 2),
        "commands_per_call": round(total / calls, 2) if calls else None,
        "top_commands_per_event": {k: round(v / args.events, 2) for k, v in top},
        "browse_counters": browse,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--levels", default="light,burst")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    report: dict[str, Any] = {"machine": machine()}
    if not args.skip_throughput:
        report["throughput"] = throughput(args)
    with tempfile.TemporaryDirectory() as d:
        report["cost"] = [cost(level, args, Path(d)) for level in args.levels.split(",") if level]
    if args.json:
        print(json.dumps(report))
        return 0
    if "throughput" in report:
        for i, r in enumerate(report["throughput"]["runs"]):
            print(
                f"run {i}: webhook {r['webhook']['rps']:8} req/s  collector "
                f"{r['collector']['rps']:8} req/s  ratio {r['ratio']}"
            )
        print(f"median ratio collector/webhook: {report['throughput']['median_ratio']}")
    for c in report["cost"]:
        print(
            f"{c['level']:6} {c['commands_per_event']} commands/browse event, "
            f"{c['commands_per_call']} commands/call ({c['calls_delivered']} calls) "
            f"top: {c['top_commands_per_event']}"
        )
        print(f"       {c['browse_counters']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
