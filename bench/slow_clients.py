"""Slow-clients bench: valid webhooks while clients trickle requests that never complete.

    .venv/bin/python bench/slow_clients.py [--slow 32] [--rate 500] [--duration 10] [--runs 3]
        [--worker-class CLASS] [--json]

Against the web as the Procfile runs it (gunicorn.conf.py, its worker class unless
`--worker-class` overrides it through GUNICORN_WORKER_CLASS): each run drives signed, realistic
webhooks open loop at `--rate` for `--duration` seconds twice, first alone, then while `--slow`
connections are kept open, each announcing a 1 000-byte body, sending 9 bytes of it, then one
byte every 0.5 s. A connection the server ends is replaced at once, so `--slow` are open at all
times. Prints p50 and p99 of the valid webhooks (from when each was due: no coordinated
omission), their statuses, and how long the server let each slow connection live.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    machine,
    percentile,
    run_py_driver,
    service_env,
    services,
    start_redis,
    start_web,
)

PARTIAL = (
    b"POST /webhooks/shopify HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n"
    b'{"id": 12'
)
TRICKLE_EVERY_S = 0.5


class Tricklers:
    """`n` slow connections kept open on a thread of their own (they mostly sleep)."""

    def __init__(self, port: int, n: int) -> None:
        self.port = port
        self.n = n
        self.stop = threading.Event()
        self.lifetimes: list[float] = []
        self.answered_408 = 0
        self.opened = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Tricklers:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _open(self, sel: selectors.BaseSelector) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.sendall(PARTIAL)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, time.monotonic())
        self.opened += 1

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        for _ in range(self.n):
            self._open(sel)
        next_byte = time.monotonic() + TRICKLE_EVERY_S
        while not self.stop.is_set():
            for key, _ in sel.select(0.05):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data.startswith(b"HTTP/1.1 408"):
                    self.answered_408 += 1
                self.lifetimes.append(time.monotonic() - key.data)
                sel.unregister(sock)
                sock.close()
                self._open(sel)  # keep `n` open
            if time.monotonic() >= next_byte:
                next_byte += TRICKLE_EVERY_S
                for key in list(sel.get_map().values()):
                    with contextlib.suppress(OSError):
                        key.fileobj.send(b"0")  # type: ignore[union-attr]
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()


def _drive(port: int, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return run_py_driver(
        port,
        concurrency=args.concurrency,
        duration_s=args.duration,
        rate=args.rate,
        seed=seed,
        pool=256,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    extra = {"WEB_REQUEST_DEADLINE_S": str(args.deadline)}
    if args.worker_class:
        extra["GUNICORN_WORKER_CLASS"] = args.worker_class
    with services() as started:
        redis_svc = start_redis()
        started.append(redis_svc)
        env = service_env(redis_svc.url, **extra)
        for i in range(args.runs):
            web = start_web(env, workers=args.web_concurrency)
            started.append(web)
            try:
                _drive(web.port, argparse.Namespace(**{**vars(args), "duration": 1}), 99)
                alone = _drive(web.port, args, i + 1)
                with Tricklers(web.port, args.slow) as slow:
                    time.sleep(1.0)  # every slow connection is open before the load starts
                    during = _drive(web.port, args, 100 + i)
                runs.append(
                    {
                        "alone": alone,
                        "with_slow": during,
                        "slow": {
                            "open": args.slow,
                            "opened": slow.opened,
                            "ended_by_server": len(slow.lifetimes),
                            "answered_408": slow.answered_408,
                            "lifetime_p50_s": round(percentile(slow.lifetimes, 50), 2),
                            "lifetime_max_s": round(max(slow.lifetimes, default=0.0), 2),
                        },
                    }
                )
            finally:
                web.stop()
                started.remove(web)

    def med(phase: str, key: str) -> float:
        return round(statistics.median(float(r[phase][key]) for r in runs), 2)

    summary = {
        "alone_p50_ms": med("alone", "p50_ms"),
        "alone_p99_ms": med("alone", "p99_ms"),
        "with_slow_p50_ms": med("with_slow", "p50_ms"),
        "with_slow_p99_ms": med("with_slow", "p99_ms"),
        "with_slow_errors": sum(int(r["with_slow"]["errors"]) for r in runs),
        "with_slow_requests": sum(int(r["with_slow"]["requests"]) for r in runs),
    }
    summary["targets"] = {
        "p99_with_slow_lt_100ms": summary["with_slow_p99_ms"] < 100
        and summary["with_slow_errors"] == 0,
    }
    return {
        "bench": "slow_clients",
        "machine": machine(),
        "params": {
            "runs": args.runs,
            "duration_s": args.duration,
            "rate": args.rate,
            "concurrency": args.concurrency,
            "slow": args.slow,
            "deadline_s": args.deadline,
            "web_concurrency": args.web_concurrency,
            "worker_class": args.worker_class or "gunicorn.conf.py's",
        },
        "summary": summary,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    p.add_argument("--rate", type=float, default=500.0, help="valid webhooks per second")
    p.add_argument("--concurrency", type=int, default=32, help="driver connections")
    p.add_argument("--slow", type=int, default=32, help="slow connections kept open")
    p.add_argument("--deadline", type=float, default=5.0, help="WEB_REQUEST_DEADLINE_S")
    p.add_argument(
        "--web-concurrency",
        type=int,
        default=min(8, 2 * len(os.sched_getaffinity(0))),
        help="WEB_CONCURRENCY (default: gunicorn.conf.py's, 2 per core)",
    )
    p.add_argument("--worker-class", default="", help="GUNICORN_WORKER_CLASS, e.g. sync")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        print(json.dumps(out))
        return 0
    m, s, prm = out["machine"], out["summary"], out["params"]
    print(f"machine: {m['nproc']} cpu, {m['cpu']}, {m['mem_gb']} GB; worker {prm['worker_class']}")
    for i, r in enumerate(out["runs"], 1):
        a, w, sl = r["alone"], r["with_slow"], r["slow"]
        print(
            f"run {i}: alone p50 {a['p50_ms']} p99 {a['p99_ms']} ms ({a['statuses']}) | "
            f"{sl['open']} slow open: p50 {w['p50_ms']} p99 {w['p99_ms']} ms "
            f"({w['statuses']}, {w['errors']} errors) | slow ended by the server "
            f"{sl['ended_by_server']} ({sl['answered_408']} with 408) after "
            f"{sl['lifetime_p50_s']} s (max {sl['lifetime_max_s']} s)"
        )
    print(
        f"median at {prm['rate']:.0f} webhooks/s: alone p99 {s['alone_p99_ms']} ms, "
        f"with {prm['slow']} slow connections p50 {s['with_slow_p50_ms']} "
        f"p99 {s['with_slow_p99_ms']} ms, {s['with_slow_errors']} errors"
    )
    print("targets:", json.dumps(s["targets"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
