"""Shared bench machinery: real processes (redis-server, gunicorn as the Procfile runs it, `bridge
worker`, the Pipelines stand-in), a signed realistic webhook generator, load drivers, peak RSS.

Everything under test runs in its own process; the load driver is a separate process too (wrk
when installed, else a threaded keep-alive http.client driver), so the bench process itself only
orchestrates and never competes for the GIL with what it measures.

`python bench/common.py drive ...` is the Python driver; `python bench/common.py standin ...`
runs `tests.pipelines_standin.PipelinesStandIn` and, on SIGTERM, dumps what it accepted with
`received_at`
(the stand-in's control API returns calls without their arrival times).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import http.client
import json
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Fresh at every run: the bridge ignores deliveries triggered over 24 h ago (staleness filter).
TRIGGERED_AT = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from bridge import signature  # noqa: E402
from bridge.store import server as redis_server  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "shopify"
SECRET = "bench-webhook-secret"
WRITE_KEY = "bench-write-key"
PATH = "/webhooks/shopify"

# Black Friday mix: cart updates dominate. (topic, fixture, weight)
TOPIC_MIX: tuple[tuple[str, str, int], ...] = (
    ("carts/update", "carts-update", 30),
    ("carts/create", "carts-create", 15),
    ("checkouts/create", "checkouts-create", 10),
    ("checkouts/update", "checkouts-update", 15),
    ("orders/create", "orders-create", 10),
    ("orders/paid", "orders-paid", 12),
    ("refunds/create", "refunds-create", 8),
)
MIN_BODY = 2 * 1024
MAX_BODY = 20 * 1024
# `--mix orders`: the order-only backlog of issue 19 (every webhook an orders/paid with exactly
# ORDER_LINES line items), the mix where a worker produces the most work per webhook.
ORDER_MIX: tuple[tuple[str, str, int], ...] = (("orders/paid", "orders-paid", 1),)
ORDER_LINES = 8
MIXES = {"shop": TOPIC_MIX, "orders": ORDER_MIX}


# --- machine ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the absolute figures were measured on."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """A started process and what the bench needs to know about it."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int = 0
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_redis() -> Service:
    """A private redis-server on a free port (no persistence, noeviction, as the tests run it)."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="cb-bench-redis-")
    args = redis_server.command(port, workdir)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    svc = Service("redis", proc, port, f"redis://127.0.0.1:{port}/0")
    import redis as redis_lib

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis_lib.Redis(port=port, socket_timeout=0.5).ping():
                return svc
        except redis_lib.RedisError:
            time.sleep(0.05)
    svc.stop()
    raise RuntimeError("redis-server did not start")


def procfile_command(name: str) -> list[str]:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return shlex.split(line.split(":", 1)[1])
    raise RuntimeError(f"no {name} in Procfile")


def service_env(
    redis_url: str, pipelines_url: str = "http://127.0.0.1:9/v1", **extra: str
) -> dict[str, str]:
    """The environment a web or worker process runs with (Heroku-like: settings from env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINES_", "SHOPIFY_"))}
    env.update(
        REDIS_URL=redis_url,
        SHOPIFY_WEBHOOK_SECRET=SECRET,
        PIPELINES_WRITE_KEY=WRITE_KEY,
        PIPELINES_URL=pipelines_url,
        PYTHONPATH=str(ROOT),
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    )
    env.update(extra)
    return env


def wait_http(
    port: int, path: str = "/healthz", timeout_s: float = 30.0, method: str = "GET"
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=None)
            with urllib.request.urlopen(req, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port}")


LOG_DIR = Path(tempfile.gettempdir()) / "cartbridge-bench-logs"


def _log(name: str) -> Any:
    """Where a service's output goes (its log lines would otherwise flood the bench's output)."""
    LOG_DIR.mkdir(exist_ok=True)
    return open(LOG_DIR / f"{name}.log", "ab")


def start_web(env: dict[str, str], *, app: str | None = None, workers: int = 2) -> Service:
    """gunicorn with the Procfile's exact command (and gunicorn.conf.py); `app` swaps only the
    WSGI target, so a baseline app runs under the very same settings."""
    cmd = procfile_command("web")
    if app is not None:
        cmd = [app if c == "bridge.web.wsgi:app" else c for c in cmd]
    port = free_port()
    env = dict(env, PORT=str(port), WEB_CONCURRENCY=str(workers))
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=_log("web"))
    svc = Service("web", proc, port, f"http://127.0.0.1:{port}")
    try:
        wait_http(port)
    except RuntimeError:
        svc.stop()
        raise
    # gunicorn forks its workers after the master answers; wait until all are there.
    deadline = time.monotonic() + 10
    while len(children(proc.pid)) < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    return svc


def start_workers(n: int, env: dict[str, str]) -> list[Service]:
    """`n` worker processes, each started with the Procfile's `worker` command."""
    cmd = procfile_command("worker")
    return [
        Service(
            f"worker{i}",
            subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=_log("worker"), stderr=subprocess.STDOUT
            ),
        )
        for i in range(n)
    ]


def announced_url(proc: subprocess.Popen[bytes]) -> str:
    """The URL a stand-in process prints as its first line once it listens (killed if none)."""
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError("stand-in did not start")
    return url


def start_standin(delay_ms: float, records_out: str) -> Service:
    """The Pipelines stand-in in its own process; it writes its records to `records_out` on stop."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "common.py"),
            "standin",
            "--delay-ms",
            str(delay_ms),
            "--records-out",
            records_out,
        ],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    url = announced_url(proc)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    return Service("standin", proc, port, url, {"records_out": records_out})


def standin_stats(svc: Service) -> dict[str, Any]:
    with urllib.request.urlopen(svc.url.removesuffix("/v1") + "/_standin/stats", timeout=5) as r:
        return dict(json.loads(r.read()))


def stop_standin(svc: Service) -> list[dict[str, Any]]:
    """Stop the stand-in and return its records: [{"t": received_at, "call": {...}}]."""
    svc.stop()
    path = Path(svc.extra.get("records_out") or "")
    return list(orjson.loads(path.read_bytes())) if path.is_file() else []


def _standin_main(args: argparse.Namespace) -> int:
    from tests.pipelines_standin import PipelinesStandIn

    standin = PipelinesStandIn(write_keys={WRITE_KEY}, delay_s=args.delay_ms / 1000.0)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    standin.start()
    print(standin.url, flush=True)
    done.wait()
    records = [{"t": r.received_at, "call": r.call} for r in standin.records]
    tmp = args.records_out + ".tmp"
    Path(tmp).write_bytes(orjson.dumps(records))
    os.replace(tmp, args.records_out)
    standin.stop()
    return 0


# --- memory -------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append(int(d.name))
    return sorted(out)


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, in MB; 0.0 when it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def tree_rss(pid: int) -> dict[str, Any]:
    """Peak RSS of a process and its children, and their sum (a dyno's footprint)."""
    kids = children(pid)
    own = peak_rss_mb(pid)
    kid_rss = [peak_rss_mb(k) for k in kids]
    return {"main_mb": own, "children_mb": kid_rss, "total_mb": round(own + sum(kid_rss), 1)}


# --- CPU (Linux: /proc) -------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds a live process (all its threads) has used; 0.0 when gone."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        # utime and stime are fields 14 and 15 of proc(5); fields[0] is field 3, after comm.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return 0.0


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used by a live process and its live children (a gunicorn master and workers)."""
    return cpu_s(pid) + sum(cpu_s(k) for k in children(pid))


def reaped_children_cpu_s() -> float:
    """CPU seconds of this process's children that have exited and been waited for: a load driver
    that `subprocess.run` ran to completion (its pid is gone before /proc could be read after)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- webhooks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Webhook:
    topic: str
    shop: str
    body: bytes
    hmac: str
    markers: tuple[str, ...]  # ids unique to this webhook that its calls carry

    def headers(self, webhook_id: str) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "X-Shopify-Topic": self.topic,
            "X-Shopify-Shop-Domain": self.shop,
            "X-Shopify-Webhook-Id": webhook_id,
            "X-Shopify-API-Version": "2025-07",
            "X-Shopify-Triggered-At": TRIGGERED_AT,
            "X-Shopify-Hmac-Sha256": self.hmac,
        }


class WebhookFactory:
    """Deterministic signed webhooks from the Shopify fixtures: a topic mix, 2-20 KB bodies, and
    fresh cart, checkout, order and customer ids in each, so every webhook's calls are its own."""

    def __init__(self, seed: int = 1, shops: int = 4, mix: str = "shop") -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.shops = [f"bench-{seed}-{i}.myshopify.com" for i in range(shops)]
        self.n = 0
        self.mix = mix
        chosen = MIXES[mix]
        self.templates = {
            f: orjson.loads((FIXTURES / f"{f}.json").read_bytes())
            for _, f, _ in (*chosen, ("carts/create", "carts-create", 0))
        }
        self.spare_item = self.templates["carts-create"]["line_items"][0]
        self.topics = [t for t, _, _ in chosen]
        self.fixture = {t: f for t, f, _ in chosen}
        self.weights = [w for _, _, w in chosen]

    def make(self) -> Webhook:
        self.n += 1
        n = self.n
        topic = self.rng.choices(self.topics, self.weights)[0]
        body: dict[str, Any] = copy.deepcopy(self.templates[self.fixture[topic]])
        num = 7_000_000_000_000 + self.seed * 100_000_000 + n
        tag = f"b{self.seed}x{n}"
        markers: list[str] = []
        if topic.startswith("carts/"):
            body["id"] = body["token"] = f"cart{tag}"
            markers.append(f"cart{tag}")
        elif topic.startswith("checkouts/"):
            body["id"] = num
            body["token"] = f"co{tag}"
            body["cart_token"] = f"cart{tag}"
            markers += [str(num), f"co{tag}", f"cart{tag}"]
        elif topic.startswith("orders/"):
            body["id"] = num
            body["test"] = False
            body["cart_token"] = f"cart{tag}"
            body["checkout_token"] = f"co{tag}"
            body["checkout_id"] = num + 1
            markers += [str(num), f"co{tag}", f"cart{tag}"]
        else:  # refunds
            body["id"] = num
            body["order_id"] = num + 2
            markers += [str(num + 2)]
        customer = body.get("customer")
        if isinstance(customer, dict):
            customer["id"] = num + 3
            customer["email"] = f"bench+{tag}@example.com"
            markers.append(str(num + 3))
            if "email" in body:
                body["email"] = customer["email"]
            if "contact_email" in body:
                body["contact_email"] = customer["email"]
        if self.mix == "orders":
            self._lines(body, n, ORDER_LINES)
        else:
            self._pad(body, n)
        raw = orjson.dumps(body)
        return Webhook(
            topic=topic,
            shop=self.shops[n % len(self.shops)],
            body=raw,
            hmac=signature.sign(raw, SECRET.encode()),
            markers=tuple(markers),
        )

    def _lines(self, body: dict[str, Any], n: int, count: int) -> None:
        """Exactly `count` distinct line items (products, variants and SKUs of their own)."""
        items = body.get("line_items")
        template = items[0] if isinstance(items, list) and items else self.spare_item
        lines = []
        for k in range(count):
            item = copy.deepcopy(template)
            for key in ("id", "variant_id", "product_id"):
                if isinstance(item.get(key), int):
                    item[key] = 9_000_000_000 + n * 100 + k
            if isinstance(item.get("sku"), str):
                item["sku"] = f"SKU-{n}-{k}"
            lines.append(item)
        body["line_items"] = lines

    def _pad(self, body: dict[str, Any], n: int) -> None:
        """Add line items until the body reaches a size drawn from 2-20 KB (never over 20 KB)."""
        items = body.get("line_items")
        if not isinstance(items, list):
            return
        target = self.rng.randint(MIN_BODY, MAX_BODY)
        size = len(orjson.dumps(body))
        template = items[0] if items else self.spare_item
        step = len(orjson.dumps(template)) + 1
        k = 0
        while size + step <= min(target, MAX_BODY) or size < MIN_BODY:
            k += 1
            item = copy.deepcopy(template)
            for key in ("id", "variant_id", "product_id"):
                if isinstance(item.get(key), int):
                    item[key] = 9_000_000_000 + n * 100 + k
            if "key" in item:
                item["key"] = f"{item.get('variant_id')}:{n}:{k}"
            items.append(item)
            size += step


# --- load drivers -------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    i = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[i]


def have_wrk(install: bool = True) -> str | None:
    """The wrk binary; installs it with apt-get when allowed and possible, else None."""
    found = shutil.which("wrk")
    if found or not install:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "wrk"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        )
    return shutil.which("wrk")


_WRK_LUA = """
local bodies = {%(bodies)s}
local hmacs = {%(hmacs)s}
local topics = {%(topics)s}
local shops = {%(shops)s}
local counter = 0
local tid = 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  tid = wrk.thread:get("tid") or 0
end
request = function()
  counter = counter + 1
  local i = (counter %% #bodies) + 1
  local h = {}
  h["Content-Type"] = "application/json"
  h["X-Shopify-Topic"] = topics[i]
  h["X-Shopify-Shop-Domain"] = shops[i]
  h["X-Shopify-Webhook-Id"] = "%(run)s-" .. tid .. "-" .. counter
  h["X-Shopify-API-Version"] = "2025-07"
  h["X-Shopify-Triggered-At"] = "%(triggered_at)s"
  h["X-Shopify-Hmac-Sha256"] = hmacs[i]
  return wrk.format("POST", "%(path)s", h, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,' ..
    '"write":%%d,"status":%%d,"timeout":%%d,"p50_us":%%d,"p99_us":%%d,"max_us":%%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def _lua_str(b: bytes | str) -> str:
    text = b.decode() if isinstance(b, bytes) else b
    # A long bracket whose level does not occur in the text.
    level = 1
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def wrk_script(hooks: Sequence[Webhook], run_id: str, path: str = PATH) -> str:
    return _WRK_LUA % {
        "bodies": ",".join(_lua_str(h.body) for h in hooks),
        "hmacs": ",".join(_lua_str(h.hmac) for h in hooks),
        "topics": ",".join(_lua_str(h.topic) for h in hooks),
        "shops": ",".join(_lua_str(h.shop) for h in hooks),
        "run": run_id,
        "triggered_at": TRIGGERED_AT,
        "path": path,
    }


def run_wrk(
    wrk: str,
    port: int,
    hooks: Sequence[Webhook],
    *,
    concurrency: int,
    duration_s: float,
    threads: int = 1,
) -> dict[str, Any]:
    """Closed-loop load at fixed concurrency for a fixed time; fresh webhook ids per request."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(wrk_script(hooks, f"w{time.time_ns()}"))
        script = fh.name
    try:
        out = subprocess.run(
            [
                wrk,
                "-t",
                str(threads),
                "-c",
                str(concurrency),
                "-d",
                f"{max(1, round(duration_s))}s",
                "--timeout",
                "5s",
                "-s",
                script,
                f"http://127.0.0.1:{port}{PATH}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script)
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    raw = json.loads(line[len("WRKJSON ") :])
    secs = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    return {
        "driver": "wrk",
        "requests": raw["requests"],
        "ok": raw["requests"] - raw["status"],
        "errors": errors,
        "seconds": round(secs, 3),
        "rps": round(raw["requests"] / secs, 1) if secs else 0.0,
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
    }


def run_py_driver(
    port: int,
    *,
    concurrency: int,
    duration_s: float = 0.0,
    count: int = 0,
    rate: float = 0.0,
    seed: int = 1,
    shops: int = 4,
    pool: int = 0,
    posts_out: str | None = None,
    mix: str = "shop",
) -> dict[str, Any]:
    """Run the Python driver in its own process and return its JSON summary."""
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "common.py"),
        "drive",
        "--port",
        str(port),
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration_s),
        "--count",
        str(count),
        "--rate",
        str(rate),
        "--seed",
        str(seed),
        "--shops",
        str(shops),
        "--pool",
        str(pool),
        "--mix",
        mix,
    ]
    if posts_out:
        cmd += ["--posts-out", posts_out]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _drive_main(args: argparse.Namespace) -> int:
    """Keep-alive http.client threads; closed loop, or open loop at `rate` per second.

    With `--pool N` it cycles N pre-built bodies with fresh webhook ids (load shape only);
    otherwise every webhook is distinct (`--count`, or rate x duration) and `--posts-out` gets
    one `[index, wall time of send]` per accepted webhook, for end-to-end matching.
    """
    factory = WebhookFactory(seed=args.seed, shops=args.shops, mix=args.mix)
    total = args.count or (int(args.rate * args.duration) if args.rate else 0)
    if args.pool or not total:
        hooks = [factory.make() for _ in range(args.pool or 256)]
        cycle = True
    else:
        hooks = [factory.make() for _ in range(total)]
        cycle = False
    run = f"d{time.time_ns()}"
    lock = threading.Lock()
    state = {"next": 0}
    lat: list[float] = []
    posts: list[tuple[int, float]] = []
    statuses: dict[int, int] = {}
    errors = [0]
    start = time.monotonic() + 0.05
    deadline = start + args.duration if args.duration else float("inf")

    def take() -> int | None:
        with lock:
            i = state["next"]
            if not cycle and i >= len(hooks):
                return None
            state["next"] = i + 1
            return i

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
        while True:
            i = take()
            if i is None:
                return
            due = start + i / args.rate if args.rate else time.monotonic()
            if due > deadline or time.monotonic() > deadline:
                return
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            hook = hooks[i % len(hooks)]
            wall = time.time()
            t0 = time.monotonic()
            try:
                conn.request("POST", PATH, hook.body, hook.headers(f"{run}-{i}"))
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
                with lock:
                    errors[0] += 1
                continue
            # Open loop: latency counts from when the request was due (no coordinated omission).
            ms = (time.monotonic() - (due if args.rate else t0)) * 1000
            with lock:
                lat.append(ms)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    posts.append((i, wall))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
    while time.monotonic() < start:
        time.sleep(0.001)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - start
    done = sum(statuses.values())
    if args.posts_out:
        Path(args.posts_out).write_bytes(orjson.dumps(sorted(posts)))
    print(
        json.dumps(
            {
                "driver": "python",
                "requests": done,
                "ok": statuses.get(200, 0),
                "errors": errors[0] + done - statuses.get(200, 0),
                "statuses": {str(k): v for k, v in statuses.items()},
                "seconds": round(secs, 3),
                "rps": round(done / secs, 1) if secs else 0.0,
                "p50_ms": round(percentile(lat, 50), 2),
                "p99_ms": round(percentile(lat, 99), 2),
            }
        )
    )
    return 0


def drive(
    port: int,
    *,
    concurrency: int,
    duration_s: float,
    prefer_wrk: bool = True,
    seed: int = 1,
    shops: int = 4,
    rate: float = 0.0,
    pool: int = 256,
) -> dict[str, Any]:
    """Fixed-concurrency load for a fixed time: wrk when available (closed loop only), else the
    Python driver; `rate` > 0 means open loop at that many requests per second (Python)."""
    wrk = have_wrk() if prefer_wrk and not rate else None
    if wrk:
        factory = WebhookFactory(seed=seed, shops=shops)
        hooks = [factory.make() for _ in range(pool)]
        return run_wrk(wrk, port, hooks, concurrency=concurrency, duration_s=duration_s)
    return run_py_driver(
        port,
        concurrency=concurrency,
        duration_s=duration_s,
        rate=rate,
        seed=seed,
        shops=shops,
        pool=pool,
    )


@contextlib.contextmanager
def services() -> Iterator[list[Service]]:
    """Collects started services and stops them all (in reverse) however the bench ends."""
    started: list[Service] = []
    try:
        yield started
    finally:
        for svc in reversed(started):
            with contextlib.suppress(Exception):
                svc.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/common.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drive")
    d.add_argument("--port", type=int, required=True)
    d.add_argument("--concurrency", type=int, default=8)
    d.add_argument("--duration", type=float, default=0.0)
    d.add_argument("--count", type=int, default=0)
    d.add_argument("--rate", type=float, default=0.0)
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--shops", type=int, default=4)
    d.add_argument("--pool", type=int, default=0)
    d.add_argument("--posts-out")
    d.add_argument("--mix", choices=sorted(MIXES), default="shop")
    s = sub.add_parser("standin")
    s.add_argument("--delay-ms", type=float, default=0.0)
    s.add_argument("--records-out", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "drive":
        return _drive_main(args)
    return _standin_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
