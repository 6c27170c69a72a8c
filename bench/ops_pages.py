"""Ops console bench: every page's answer time with 50 shops and 28 days of buckets.

    .venv/bin/python bench/ops_pages.py [--shops 50] [--letters 100] [--requests 20] [--json]

A private redis-server is filled the way the bridge fills it (the store's own key names and
record formats): per shop, 29 days of hourly and 26 h of 5-minute buckets for the three key
events and for webhooks, alert state and ended alerts, `--letters` dead letters (calls), a
full webhook log, and one converted shopper (state records and a full ledger). Then the web
runs as the Procfile runs it, with OPS_TOKEN set, and a client logged in as an admin asks
each page `--requests` times, one at a time (after one warm-up request per page). Prints the
median and the slowest answer per page, and whether each is under the 200 ms target.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import re
import statistics
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import redis as redis_lib

from bench.common import machine, service_env, services, start_redis, start_web
from bridge import keyed
from bridge.delivery.deadletters import call_letter
from bridge.delivery.outbox import OutboxEntry
from bridge.identity.graph import person_key
from bridge.store import deadletters as letter_store
from bridge.store import ops as ops_records
from bridge.store.keys import SHOPS_KEY, Keys

TOKEN = "bench-ops-admin-token"
IDENTITY_KEY = "bench-identity-key"
EVENTS = ("added_to_cart", "checkout_started", "order_completed")
CUSTOMER = "7358220173425"
TARGET_MS = 200.0


def shop_name(i: int) -> str:
    return f"bench-shop-{i:02d}.myshopify.com"


def seed(client: redis_lib.Redis, shops: int, letters: int, now_s: int) -> None:
    """Fill Redis as 28 days of a busy bridge would (shop by shop, one pipeline each)."""
    keyed.configure(IDENTITY_KEY.encode())
    for i in range(shops):
        shop = shop_name(i)
        k = Keys(shop)
        pipe = client.pipeline(transaction=False)
        pipe.sadd(SHOPS_KEY, shop)
        hours = range(now_s // 3600 * 3600 - 29 * 86400, now_s, 3600)
        fives = range(now_s // 300 * 300 - 26 * 3600, now_s, 300)
        for j, event in enumerate(EVENTS):
            pipe.hset(
                k.volume_coarse(event), mapping={h: 40 + (h // 3600 % 24) * (3 - j) for h in hours}
            )
            pipe.hset(k.volume_fine(event), mapping={f: 4 + (f // 300 % 12) for f in fives})
        for h in hours:
            pipe.hincrby(k.webhook_buckets("1h", h // 86400), h, 200)
        for f in fives:
            pipe.hincrby(k.webhook_buckets("5m", f // 86400), f, 17)
        pipe.hset(
            k.alerts,
            "order_completed:drop",
            orjson.dumps({"since": (now_s - 1800) * 1000, "sent": now_s * 1000}),
        )
        for a in range(10):
            start = now_s - (a + 1) * 2 * 86400
            pipe.lpush(
                k.alert_history,
                orjson.dumps(
                    {
                        "event": "added_to_cart",
                        "kind": "drop",
                        "since": start * 1000,
                        "until": (start + 3600) * 1000,
                    }
                ),
            )
        for n in range(letters):
            call = orjson.dumps(
                {
                    "type": "track",
                    "event": "order_completed",
                    "messageId": f"01BENCH{i:02d}{n:08d}",
                    "userId": str(1000 + n),
                    "properties": {"order_id": str(n), "items": [{"name": "Tee", "price": 20}]},
                }
            )
            entry = OutboxEntry(call, now_s * 1000, str(1000 + n)).encode()
            letter = call_letter(
                shop,
                entry,
                "not accepted by Pipelines (422)",
                status=422,
                response='{"error":"nope"}',
                first_error_ms=(now_s - n * 60) * 1000,
                last_error_ms=(now_s - n * 60) * 1000,
            )
            letter_store.stage(pipe, shop, [letter], now_s * 1000)
        for n in range(ops_records.WEBHOOK_LOG_SIZE):
            pipe.lpush(
                k.webhook_log,
                ops_records.webhook_entry(
                    (now_s - n) * 1000,
                    "carts/update",
                    f"hook-{n}",
                    "processed",
                    calls={"added_to_cart": 1},
                ),
            )
        # One converted shopper: links, traits, and a full ledger.
        pk = person_key(CUSTOMER)
        pipe.set(
            k.state("person:" + pk),
            orjson.dumps(
                {
                    "f": {f"trait_{t}": ["2026-11-30T00:00:00Z", t] for t in range(30)},
                    "anons": ["anon-1"],
                    "cart": "bench-cart",
                }
            ),
        )
        pipe.set(
            k.state("orders:" + pk),
            orjson.dumps(
                {
                    "o": {
                        str(o): {"at": "2026-11-01T00:00:00Z", "t": "20.00", "c": "USD"}
                        for o in range(20)
                    }
                }
            ),
        )
        pipe.set(
            k.state("cart:bench-cart"),
            orjson.dumps({"anon": "anon-1", "user": CUSTOMER, "lines": {"1": 1}}),
        )
        for command in ops_records.ledger_commands(
            shop,
            [
                (
                    keyed.person_hash(CUSTOMER),
                    ops_records.ledger_entry(
                        (now_s - n) * 1000,
                        "added_to_cart",
                        "delivered",
                        message_id=f"01LEDGER{n:010d}",
                    ),
                )
                for n in range(ops_records.LEDGER_CALLS)
            ],
        ):
            pipe.execute_command(*command)
        pipe.execute()


class Client:
    """A logged-in browser, as far as cookies and CSRF go."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        self.csrf = ""

    def request(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        with self.opener.open(self.base + path, data=data, timeout=30) as resp:
            return resp.status, resp.read().decode()

    def login(self) -> None:
        self.request("/ops/login", {"token": TOKEN})
        _, page = self.request("/ops/letters?shop=" + shop_name(0))
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found, "no CSRF token: the login failed"
        self.csrf = found.group(1)


def pages(shops: int) -> list[tuple[str, str, dict[str, str] | None]]:
    shop = shop_name(shops // 2)
    letter = "c-01BENCH" + f"{shops // 2:02d}" + "00000007"
    return [
        ("shops (health of every shop)", "/ops/", None),
        ("shop charts (24 h + 28 days, 4 series)", f"/ops/shops/{shop}", None),
        ("webhook log", f"/ops/shops/{shop}/webhooks", None),
        ("dead letters, one shop", f"/ops/letters?shop={shop}", None),
        ("dead letters, every shop", "/ops/letters", None),
        (
            "dead letters, every shop, filtered",
            "/ops/letters?event=order_completed&status=422&since=2h",
            None,
        ),
        ("one dead letter", f"/ops/letters/{shop}/{letter}", None),
        (
            "person lookup (POST)",
            "/ops/people",
            {"shop": shop, "kind": "customer_id", "value": CUSTOMER},
        ),
        ("replay preview, every shop (POST)", "/ops/letters/replay", {"all": "1"}),
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    with services() as started:
        redis_svc = start_redis()
        started.append(redis_svc)
        client = redis_lib.Redis.from_url(redis_svc.url)
        t0 = time.monotonic()
        seed(client, args.shops, args.letters, int(time.time()))
        seeded_s = time.monotonic() - t0
        env = service_env(
            redis_svc.url,
            OPS_TOKEN="bench-ops-viewer-token",
            OPS_ADMIN_TOKEN=TOKEN,
            OPS_COOKIE_SECURE="false",
            IDENTITY_HASH_KEY=IDENTITY_KEY,
        )
        web = start_web(env, workers=2)
        started.append(web)
        browser = Client(web.url)
        browser.login()
        for name, path, form in pages(args.shops):
            if form is not None:
                form = {**form, "csrf": browser.csrf}
            status, body = browser.request(path, form)  # warm-up
            assert status == 200, (name, status)
            times: list[float] = []
            for _ in range(args.requests):
                start = time.perf_counter()
                browser.request(path, form)
                times.append((time.perf_counter() - start) * 1000)
            results.append(
                {
                    "page": name,
                    "path": path,
                    "bytes": len(body),
                    "median_ms": round(statistics.median(times), 1),
                    "max_ms": round(max(times), 1),
                    "under_200ms": max(times) < TARGET_MS,
                }
            )
        memory = client.info("memory")["used_memory_human"]
    return {
        "bench": "ops_pages",
        "machine": machine(),
        "params": vars(args),
        "seeded_s": round(seeded_s, 1),
        "redis_memory": memory,
        "pages": results,
        "targets": {"every_page_lt_200ms": all(r["under_200ms"] for r in results)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shops", type=int, default=50)
    parser.add_argument("--letters", type=int, default=100, help="dead letters per shop")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"machine: {out['machine']}")
    seeded = f"seeded in {out['seeded_s']} s; redis {out['redis_memory']}"
    print(f"{args.shops} shops, {args.letters} dead letters each, {seeded}")
    for r in out["pages"]:
        flag = "ok" if r["under_200ms"] else "SLOW"
        times = f"median {r['median_ms']:>7.1f} ms  max {r['max_ms']:>7.1f} ms"
        print(f"{r['page']:<42} {times}  {r['bytes']:>8} B  {flag}")
    print(f"every page under {TARGET_MS:.0f} ms: {out['targets']['every_page_lt_200ms']}")


if __name__ == "__main__":
    main()
