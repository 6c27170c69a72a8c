"""Where one worker's time goes on an order-only backlog, in one process (issue 19 item 5).

`bench/pipeline.py --mix orders` gives the ratio against the official client; this bench says
why. It queues N signed `orders/paid` webhooks (8 line items each, `WebhookFactory(mix="orders")`)
through the real web app in-process, then times, one after the other and in this process:

- the drain (`worker.drain.drain`): decode, map, decide, render, commit;
- the delivery (`delivery.deliver.deliver`) of everything the drain produced, to the Pipelines
  stand-in in a process of its own (delay 0).

It prints microseconds of CPU per order for each, and with `--profile` the top functions of a
cProfile of each phase (profiling slows everything ~2x; compare phases, not runs). The garbage
collector is set as a worker sets it (`tune_gc`).

It also times, on the same bodies, the two steps no order can skip, as a floor under the drain:
reading the JSON (`orjson.loads`, the drain's parser) and validating it into the Shopify order
model (`Order.model_validate`, `--mix orders` only). Against the official client's cost per call
(`bench/pipeline.py --mix orders`, two calls an order) they say how much of a worker's budget
is spent before any decision is made.

    .venv/bin/python bench/order_path.py --orders 2000 [--profile] [--top 30]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    SECRET,
    WRITE_KEY,
    WebhookFactory,
    start_redis,
    start_standin,
    stop_standin,
)
from bridge.config.settings import load_settings  # noqa: E402
from bridge.delivery.deliver import deliver  # noqa: E402
from bridge.gctune import tune_gc  # noqa: E402
from bridge.jsonio import parse_body  # noqa: E402
from bridge.sources.shopify.models import Order  # noqa: E402
from bridge.web.app import create_app  # noqa: E402
from bridge.worker.drain import drain  # noqa: E402


class _Held:
    """A deliverer that only remembers which shops were handed over: delivery is timed apart."""

    def __init__(self) -> None:
        self.shops: set[str] = set()

    def submit(self, shop: str) -> None:
        self.shops.add(shop)


SORT = "tottime"


def _phase(fn: Any, profile: bool, top: int) -> tuple[float, float, str]:
    prof = cProfile.Profile() if profile else None
    w0, c0 = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    fn()
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    text = ""
    if prof:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(SORT).print_stats(top)
        text = out.getvalue()
    return wall, cpu, text


def _floor(bodies: list[bytes], *, validate: bool) -> tuple[float, float]:
    """CPU seconds to parse every body, and to validate every parsed body into `Order` (0.0
    when not `validate`), in batches of 100 as a drain holds them: best of three rounds."""
    parse, check = float("inf"), float("inf")
    for _ in range(3):
        p = v = 0.0
        for start in range(0, len(bodies), 100):
            c0 = time.process_time()
            parsed = [parse_body(b) for b in bodies[start : start + 100]]
            c1 = time.process_time()
            if validate:
                for doc in parsed:
                    Order.model_validate(doc)
            p, v = p + c1 - c0, v + time.process_time() - c1
        parse, check = min(parse, p), min(check, v)
    return parse, check


def run(orders: int, profile: bool, top: int, mix: str = "orders") -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="cb-bench-orders-"))
    redis_svc = start_redis()
    standin = start_standin(0.0, str(tmp / "records.json"))
    try:
        settings = load_settings(
            redis_url=redis_svc.url,
            shopify_webhook_secret=SECRET,
            pipelines_write_key=WRITE_KEY,
            pipelines_url=standin.url,
            drain_time_budget_s=3600,
        )
        app = create_app(settings)
        services = app.extensions["cartbridge"]
        held = _Held()
        services.deliverer = held
        factory = WebhookFactory(seed=1, shops=1, mix=mix)
        client = app.test_client()
        shop = ""
        bodies: list[bytes] = []
        for i in range(orders):
            hook = factory.make()
            shop = hook.shop
            bodies.append(hook.body)
            r = client.post("/webhooks/shopify", data=hook.body, headers=hook.headers(f"w{i}"))
            if r.status_code != 200:
                raise RuntimeError(f"webhook {i} answered {r.status_code}: {r.data!r}")
        tune_gc()
        d_wall, d_cpu, d_prof = _phase(lambda: drain(services, shop), profile, top)
        v_wall, v_cpu, v_prof = _phase(lambda: deliver(services, shop), profile, top)
        parse_cpu, validate_cpu = _floor(bodies, validate=mix == "orders")
    finally:
        records = stop_standin(standin)
        redis_svc.proc.terminate()
    calls = len(records)
    return {
        "orders": orders,
        "calls": calls,
        "drain_cpu_us_per_order": round(1e6 * d_cpu / orders, 1),
        "drain_wall_us_per_order": round(1e6 * d_wall / orders, 1),
        "deliver_cpu_us_per_order": round(1e6 * v_cpu / orders, 1),
        "deliver_wall_us_per_order": round(1e6 * v_wall / orders, 1),
        "worker_cpu_us_per_call": round(1e6 * (d_cpu + v_cpu) / max(calls, 1), 1),
        "parse_cpu_us_per_order": round(1e6 * parse_cpu / orders, 1),
        "validate_cpu_us_per_order": round(1e6 * validate_cpu / orders, 1),
        "profiled": profile,
        "calls_made": [r["call"] for r in records],
        "drain_profile": d_prof,
        "deliver_profile": v_prof,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--orders", type=int, default=2000)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--mix", default="orders", help="the WebhookFactory topic mix (shop: carts)")
    p.add_argument(
        "--calls-out",
        help="write the calls the stand-in accepted here, one a line with their keys in the "
        "order sent, the lines sorted (delivery's parallel requests arrive in no fixed order): "
        "two versions given the same orders must write the same file (cmp)",
    )
    p.add_argument("--json", action="store_true", help="print only the figures, as JSON")
    p.add_argument("--sort", default="tottime", help="pstats order: tottime or cumulative")
    args = p.parse_args(argv)
    global SORT
    SORT = args.sort
    out = run(args.orders, args.profile, args.top, args.mix)
    calls = out.pop("calls_made")
    if args.calls_out:
        lines = sorted(json.dumps(c) for c in calls)
        Path(args.calls_out).write_text("\n".join(lines) + "\n")
    for k in ("drain_profile", "deliver_profile"):
        if out[k] and not args.json:
            print(f"== {k}\n{out[k]}")
    print(json.dumps({k: v for k, v in out.items() if not k.endswith("_profile")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
