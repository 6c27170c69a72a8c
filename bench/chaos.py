"""Chaos run: the real stack under faults, then an account of every expected call.

Starts its own redis-server (AOF, `appendfsync always`: an acknowledged webhook is on disk, so
even a SIGKILLed Redis loses nothing) on a free port, gunicorn (the Procfile's `web` command),
W `bridge worker` processes, and a faulty loopback Pipelines stand-in
(`python -m tests.pipelines_standin
--fault-rate F`: 500, 503, 429 with Retry-After, connections dropped before and after accepting
the calls). It sends N signed webhooks in shuffled order, with redeliveries (same webhook id) and
re-sends under a new webhook id (same business event), SIGKILLs all workers while a POST is held
open by the stand-in (so at least one dies between a POST and its acknowledgement), SIGKILLs and
restarts Redis, and at the end SIGTERMs the workers and times their exit.

The expected messageIds come from the pure path (processor.map_envelope + identity.decide over
an empty state view) for topics whose calls do not depend on arrival order (orders/paid with a
customer id, customers/create, carts/create). Printed (one JSON line): expected, delivered, lost
(expected, never accepted), duplicate (one business event under two messageIds), redundant (the
same messageId accepted again), unexpected. Exits 1 when lost or duplicate > 0.

    python bench/chaos.py --webhooks 150 --workers 2          # ~1 min, the test suite's run
    python bench/chaos.py --webhooks 10000 --workers 4 --kills 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import redis as redis_lib  # noqa: E402

from bench.common import free_port  # noqa: E402
from bridge import signature  # noqa: E402
from bridge.identity import decide  # noqa: E402
from bridge.identity.records import StateView  # noqa: E402
from bridge.sources.shopify import ShopifySource  # noqa: E402
from bridge.store import server as redis_server  # noqa: E402
from bridge.store.wire import Envelope  # noqa: E402
from bridge.worker.processor import ProcessConfig, map_envelope  # noqa: E402

SECRET = "chaos-secret"
WRITE_KEY = "chaos-write-key"
# Fresh at every run: the bridge ignores deliveries triggered over 24 h ago (staleness filter).
TRIGGERED_AT = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
SAMPLES = ROOT / "bridge" / "samples"


class Redis:
    """A private redis-server with AOF on a free port; `kill()` + `start()` restarts it."""

    def __init__(self, fsync: str) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="cb-chaos-redis-")
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = redis_server.command(self.port, self.dir, aof_fsync=self.fsync)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                if redis_lib.Redis(port=self.port, socket_timeout=0.5).ping():
                    return
            except redis_lib.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def procfile(name: str) -> list[str]:
    import shlex

    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return shlex.split(line.split(":", 1)[1])
    raise SystemExit(f"no {name} in Procfile")


# --- webhooks --------------------------------------------------------------------------------


def make_webhooks(n: int, shops: list[str], rng: random.Random) -> list[dict[str, Any]]:
    """N distinct webhooks (topic, shop, body) whose calls do not depend on arrival order."""
    order = json.loads((SAMPLES / "orders-paid.json").read_text())
    customer = json.loads((SAMPLES / "customers-create.json").read_text())
    cart = json.loads((SAMPLES / "carts-create.json").read_text())
    out = []
    for i in range(n):
        shop = shops[i % len(shops)]
        kind = i % 3
        if kind == 0:
            body = json.loads(json.dumps(order))
            body["id"] = 5_000_000_000 + i
            body["test"] = False
            body["cart_token"] = None
            body["customer"]["id"] = 7_000_000_000 + i
            body["customer"]["email"] = body["email"] = body["contact_email"] = f"o{i}@example.com"
            topic = "orders/paid"
        elif kind == 1:
            body = json.loads(json.dumps(customer))
            body["id"] = 8_000_000_000 + i
            body["email"] = f"c{i}@example.com"
            topic = "customers/create"
        else:
            body = json.loads(json.dumps(cart))
            body["id"] = body["token"] = f"chaos-cart-{i}"
            topic = "carts/create"
        webhook_id = str(uuid.UUID(int=rng.getrandbits(128)))
        out.append(
            {"topic": topic, "shop": shop, "body": json.dumps(body).encode(), "id": webhook_id}
        )
    return out


def expected_ids(hooks: list[dict[str, Any]]) -> set[str]:
    """The messageIds the pure path gives each webhook (an empty state view per webhook)."""
    source, config = ShopifySource(), ProcessConfig.defaults(api_version="")
    ids: set[str] = set()
    for h in hooks:
        env = Envelope(h["shop"], h["topic"], h["id"], h["body"], triggered_at=TRIGGERED_AT)
        mapped = map_envelope(env, source, config)
        if mapped.skipped:
            continue
        for out in decide(mapped, StateView(), config.policy(h["shop"])):
            ids.add(out.call["messageId"])
    return ids


def business_key(call: dict[str, Any]) -> tuple[str, ...]:
    """What makes two calls the same business event, whatever their messageIds."""
    if call.get("type") == "identify":
        traits = orjson.dumps(call.get("traits"), option=orjson.OPT_SORT_KEYS).decode()
        return ("identify", str(call.get("userId")), traits)
    props = call.get("properties") or {}
    key = props.get("refund_id") or props.get("order_id") or props.get("cart_id") or ""
    return ("track", str(call.get("event")), str(key))


def post(port: int, hook: dict[str, Any], webhook_id: str, deadline: float) -> bool:
    """POST like Shopify: retry on 5xx or no answer until `deadline`; True once answered 200."""
    body = hook["body"]
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": hook["topic"],
        "X-Shopify-Shop-Domain": hook["shop"],
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-API-Version": "2025-07",
        "X-Shopify-Triggered-At": TRIGGERED_AT,
        "X-Shopify-Hmac-Sha256": signature.sign(body, SECRET.encode()),
    }
    url = f"http://127.0.0.1:{port}/webhooks/shopify"
    delay = 0.1
    while time.monotonic() < deadline:
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                if resp.status == 200:
                    return True
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return False
        except OSError:
            pass
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    return False


# --- the run ---------------------------------------------------------------------------------


class Stack:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.redis = Redis(args.appendfsync)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.web_port = free_port()
        self.standin: subprocess.Popen[bytes] | None = None
        self.standin_url = ""
        self.log_path = os.path.join(tempfile.gettempdir(), f"cb-chaos-{os.getpid()}.log")
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - open for the whole run
        self.kills = 0
        self.kills_mid_post = 0
        self.redis_restarts = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINES_", "SHOPIFY_"))}
        env.update(
            REDIS_URL=self.redis.url,
            SHOPIFY_WEBHOOK_SECRET=SECRET,
            PIPELINES_WRITE_KEY=WRITE_KEY,
            PIPELINES_URL=self.standin_url,
            PORT=str(self.web_port),
            WEB_CONCURRENCY="2",
            LOG_LEVEL=self.args.log_level,
            DRAIN_TIME_BUDGET_S="2",
            RETRY_BASE_S="0.2",
            RETRY_CAP_S="2",
            HTTP_TIMEOUT_S="5",
            PYTHONPATH=str(ROOT),
            PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        )
        return env

    def start(self) -> None:
        self.redis.start()
        self.standin = subprocess.Popen(
            [
                sys.executable, "-m", "tests.pipelines_standin", "--port", "0",
                "--write-key", WRITE_KEY,
                "--fault-rate", str(self.args.fault_rate), "--seed", str(self.args.seed),
                "--delay-ms", str(self.args.delay_ms),
            ],
            stdout=subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        assert self.standin.stdout is not None
        self.standin_url = self.standin.stdout.readline().decode().strip()
        web = subprocess.Popen(
            procfile("web"), env=self.env(), cwd=ROOT, stdout=self.log, stderr=self.log
        )
        self.procs.append(web)
        for _ in range(self.args.workers):
            self.start_worker()
        for _ in range(400):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("gunicorn did not come up")

    def start_worker(self) -> None:
        self.workers.append(
            subprocess.Popen(
                procfile("worker"), env=self.env(), cwd=ROOT, stdout=self.log, stderr=self.log
            )
        )

    def control(self, path: str, doc: dict[str, Any] | None = None) -> Any:
        base = self.standin_url.rsplit("/v1", 1)[0]
        data = orjson.dumps(doc) if doc is not None else None
        req = urllib.request.Request(
            base + "/_standin/" + path, data=data, method="POST" if data else "GET"
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return orjson.loads(resp.read())

    def kill_workers_mid_post(self) -> None:
        """Hold the stand-in's answers, wait for a POST to arrive, then SIGKILL every worker:
        the one that sent it dies after its calls were accepted and before its ack."""
        self.control("config", {"delay_s": 3.0})
        before = self.control("stats")["requests"]
        # Generous: on a loaded machine, workers just back from the Redis restart can take a
        # while to send again; the kill must still land mid-POST.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.control("stats")["requests"] == before:
            time.sleep(0.02)
        mid_post = self.control("stats")["requests"] > before
        for w in self.workers:
            w.kill()
            w.wait(10)
            self.kills += 1
        self.kills_mid_post += int(mid_post)
        self.workers.clear()
        self.control("config", {"delay_s": self.args.delay_ms / 1000.0})
        for _ in range(self.args.workers):
            self.start_worker()

    def restart_redis(self) -> None:
        self.redis.kill()
        time.sleep(1.0)
        self.redis.start()
        self.redis_restarts += 1

    def idle(self, shops: list[str]) -> bool:
        r = redis_lib.Redis.from_url(self.redis.url, socket_timeout=2)
        try:
            for shop in shops:
                p = f"cb:{{{shop}}}:"
                if r.llen(p + "in") or r.llen(p + "in:work") or r.llen(p + "out"):
                    return False
                if r.llen(p + "out:work") or r.zcard(p + "out:due"):
                    return False
            return True
        except redis_lib.RedisError:
            return False
        finally:
            r.close()

    def sigterm_workers(self) -> float:
        """SIGTERM every worker; seconds until the last one exited."""
        t0 = time.monotonic()
        for w in self.workers:
            w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.wait(60)
            except subprocess.TimeoutExpired:
                w.kill()
        return time.monotonic() - t0

    def stop(self) -> None:
        for p in [*self.workers, *self.procs]:
            if p.poll() is None:
                p.terminate()
        for p in [*self.workers, *self.procs]:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.standin and self.standin.poll() is None:
            self.standin.terminate()
            self.standin.wait(10)
        self.redis.kill()
        self.log.close()
        shutil.rmtree(self.redis.dir, ignore_errors=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    shops = [f"chaos-{i}.myshopify.com" for i in range(args.shops)]
    hooks = make_webhooks(args.webhooks, shops, rng)
    sends: list[tuple[dict[str, Any], str]] = [(h, h["id"]) for h in hooks]
    for h in rng.sample(hooks, len(hooks) // 10):
        sends.append((h, h["id"]))  # a redelivery: same webhook id
    for h in rng.sample(hooks, len(hooks) // 20):
        sends.append((h, str(uuid.uuid4())))  # the same event again under a new webhook id
    rng.shuffle(sends)
    expected = expected_ids(hooks)

    stack = Stack(args)
    t0 = time.monotonic()
    try:
        stack.start()
        deadline = time.monotonic() + args.timeout
        done = 0
        lock = threading.Lock()
        refused = 0

        def send(item: tuple[dict[str, Any], str]) -> None:
            nonlocal done, refused
            ok = post(stack.web_port, item[0], item[1], deadline)
            with lock:
                done += 1
                refused += int(not ok)

        kills = [("kill", (i + 1) / (args.kills + 1)) for i in range(args.kills)]
        restarts = [
            ("redis", (i + 1) / (args.redis_restarts + 1) - 0.1) for i in range(args.redis_restarts)
        ]
        marks = sorted(kills + restarts, key=lambda m: m[1])
        with ThreadPoolExecutor(args.senders) as pool:
            futures = [pool.submit(send, s) for s in sends]
            for what, at in marks:
                while done < at * len(sends) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if what == "kill":
                    stack.kill_workers_mid_post()
                else:
                    stack.restart_redis()
            for f in futures:
                f.result()
        sent_s = time.monotonic() - t0
        stack.control("config", {"fault_rate": 0.0})  # let the backlog settle
        while time.monotonic() < deadline and not stack.idle(shops):
            time.sleep(0.25)
        calls = stack.control("calls")
        sigterm_s = stack.sigterm_workers()
    finally:
        stack.stop()

    received = [c.get("messageId") for c in calls]
    unique = set(received)
    by_key: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for c in calls:
        by_key[business_key(c)].add(str(c.get("messageId")))
    return {
        "webhooks": args.webhooks,
        "sends": len(sends),
        "refused_sends": refused,
        "expected": len(expected),
        "delivered": len(expected & unique),
        "lost": len(expected - unique),
        "duplicate": sum(1 for ids in by_key.values() if len(ids) > 1),
        "redundant": len(received) - len(unique),
        "unexpected": len(unique - expected),
        "worker_kills": stack.kills,
        "kills_between_post_and_ack": stack.kills_mid_post,
        "redis_restarts": stack.redis_restarts,
        "appendfsync": args.appendfsync,
        "send_s": round(sent_s, 1),
        "total_s": round(time.monotonic() - t0, 1),
        "sigterm_exit_s": round(sigterm_s, 1),
        "log": stack.log_path,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--webhooks", type=int, default=150)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shops", type=int, default=3)
    p.add_argument("--senders", type=int, default=8, help="concurrent webhook senders")
    p.add_argument("--fault-rate", type=float, default=0.2)
    p.add_argument("--delay-ms", type=float, default=20.0, help="stand-in answer delay")
    p.add_argument("--kills", type=int, default=1, help="times all workers are SIGKILLed")
    p.add_argument("--redis-restarts", type=int, default=1)
    p.add_argument("--appendfsync", choices=["always", "everysec"], default="always")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=240.0, help="whole-run bound, seconds")
    p.add_argument("--log-level", default="ERROR")
    args = p.parse_args(argv)
    result = run(args)
    print(json.dumps(result), flush=True)
    return 1 if result["lost"] or result["duplicate"] else 0


if __name__ == "__main__":
    sys.exit(main())
