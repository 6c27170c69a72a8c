"""Product refresh bench: how long the sweep's refresh holds its worker per 1 000 products.

    .venv/bin/python bench/product_refresh.py [--products 1000] [--plan plus|standard]
        [--max-pages 5] [--no-yield] [--json]

A private redis-server and the Shopify Admin stand-in (tests/shopify_admin_standin.py: it costs
every query by Shopify's rules and keeps the plan's leaky bucket in real time) over loopback.
Every product has a taxonomy category and the two replenishment metafields, so the answers
cost what a real catalog's would (403 points a page of 100).

`products.sync.refresh` runs as the sweep runs it, from a watermark before every product, run
after run until the pass ends: pages of 100 fitted to the budget, each queued into the shop's
inbound queue, at most --max-pages a run (the sweep's: 5), a run stopping before a page that
would wait for the bucket (--no-yield: sleeping instead, as it did before). Between runs the
bench waits for the bucket as the sweep's minute would (not counted). Reported: the worker's
time in the refresh (the sum of the runs, and the longest run) per 1 000 products; the drain
processes the queued products afterwards, in its own jobs. The stand-in runs in this process
(a thread): its work is included, an upper bound for answers on loopback, not Shopify's
latency over the internet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.backfill.admin import AdminClient
from bridge.products import sync
from bridge.products.record import MetafieldKeys
from bridge.store.facade import Store
from bridge.store.products import ProductSync
from tests.conftest import SHOP, RedisServer
from tests.shopify_admin_standin import PLANS, TOKEN, AdminStandIn, gql_product

REPLENISH = {
    "custom.replenishable": ("true", "boolean"),
    "custom.days_to_replenish": ("30", "number_integer"),
}


def catalog(n: int) -> list[dict[str, object]]:
    return [
        gql_product(
            10_000 + i,
            product_type="Shampoo",
            category="Hair Care",
            metafields=REPLENISH,
            updated=f"2026-02-{i // 1440 % 28 + 1:02d}T{i // 60 % 24:02d}:{i % 60:02d}:00Z",
        )
        for i in range(n)
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--products", type=int, default=1000)
    parser.add_argument("--plan", choices=sorted(PLANS), default="plus")
    parser.add_argument("--max-pages", type=int, default=5, help="pages a run (the sweep's: 5)")
    parser.add_argument("--no-yield", action="store_true", help="sleep on the bucket instead")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    server = RedisServer()
    server.start()
    try:
        store = Store(redis.Redis.from_url(server.url))
        with AdminStandIn(catalog=catalog(args.products), plan=PLANS[args.plan]) as admin:
            client = AdminClient(shop=SHOP, token=TOKEN, url=admin.url)
            if args.no_yield:
                # As the refresh ran before it stopped for the bucket: it sleeps instead.
                client.wait_s = lambda *_: 0.0  # type: ignore[method-assign]
            state = ProductSync(store.redis, SHOP)
            state.set_watermark("2026-01-01T00:00:00.000Z")
            now = datetime(2026, 3, 1, tzinfo=UTC)
            runs: list[float] = []
            read = pages = 0
            while True:
                started = time.perf_counter()
                report = sync.refresh(
                    client, store, state, SHOP, MetafieldKeys(), now, max_pages=args.max_pages
                )
                runs.append(time.perf_counter() - started)
                read, pages = read + report.refreshed, pages + report.pages
                if state.saved_pass() is None:
                    break
                # Between runs the sweep waits a minute: the bucket refills meanwhile. Not the
                # worker's time.
                time.sleep(client.wait_s(sync.PRODUCTS_QUERY, {"first": 100}))
            client.close()
            costs = list(admin.costs)
            throttled = admin.answers.count("throttled")
        store_queued = store.inbound_length(SHOP)
        store.close()
    finally:
        server.stop()
    worker_s = sum(runs)
    result = {
        "products": read,
        "pages": pages,
        "plan": args.plan,
        "runs": len(runs),
        "worker_seconds": round(worker_s, 3),
        "worker_seconds_per_1000": round(worker_s * 1000 / max(read, 1), 3),
        "longest_run_seconds": round(max(runs), 3),
        "requested_cost_per_page": max(costs) if costs else 0,
        "throttled_answers": throttled,
        "queued": store_queued,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
