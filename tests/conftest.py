"""Fixtures named after what they give: a private redis-server, settings, app, pipelines stand-in.

The tests start their own redis-server on a free port, so they never touch the data of anyone
else using a shared Redis on 6379 (and may flush and restart theirs freely).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from bridge import signature
from bridge.config.settings import Settings
from bridge.store import server as redis_server_cmd
from bridge.store.facade import flush_every_store
from tests.pipelines_standin import PipelinesStandIn

pytest_plugins = ["tests.browser"]

FIXTURES = Path(__file__).parent / "fixtures" / "shopify"
ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-webhook-secret"
WRITE_KEY = "test-write-key"
SHOP = "test-shop.myshopify.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server process (optionally with AOF) that tests may stop and restart."""

    def __init__(self, appendonly: bool = False) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="cb-redis-")
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        fsync = "always" if self.appendonly else None
        args = redis_server_cmd.command(self.port, self.dir, aof_fsync=fsync)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis_lib.Redis(port=self.port, socket_timeout=0.5).ping():
                    return
            except redis_lib.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_server.url)
    # Counters an earlier test's web process still held (written within a second by a thread
    # of its own, store/facade.py) land now, before the flush, not in this test's Redis.
    flush_every_store()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def pipelines() -> Iterator[PipelinesStandIn]:
    with PipelinesStandIn(write_keys={WRITE_KEY}) as standin:
        yield standin


@pytest.fixture
def settings(
    redis: redis_lib.Redis, redis_server: RedisServer, pipelines: PipelinesStandIn, tmp_path: Path
) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        shopify_webhook_secret=SECRET,
        pipelines_write_key=WRITE_KEY,
        pipelines_url=pipelines.url,
        drain_time_budget_s=2.0,
        dry_run_file=str(tmp_path / "dry-run.jsonl"),
    )


def fixture_bytes(name: str, shop: str = SHOP) -> bytes:
    """A recorded body; the documented samples' `{shop}.myshopify.com` becomes the test shop
    (compliance requests must name the shop their header names)."""
    raw = (FIXTURES / f"{name}.json").read_bytes()
    return raw.replace(b"{shop}.myshopify.com", shop.encode())


def fixture_json(name: str, shop: str = SHOP) -> dict[str, Any]:
    return dict(json.loads(fixture_bytes(name, shop)))


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON value (a list's first three items only), for mutating bodies."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, k)
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            yield (*prefix, i)
            yield from paths(v, (*prefix, i))


def webhook_headers(
    body: bytes,
    topic: str,
    *,
    shop: str = SHOP,
    secret: str = SECRET,
    webhook_id: str | None = None,
    triggered_at: str | None = None,
) -> dict[str, str]:
    # Now, unless given: a fixed date would make every test webhook stale a day later.
    at = triggered_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
        "X-Shopify-API-Version": "2026-10",
        "X-Shopify-Triggered-At": at,
        "X-Shopify-Hmac-Sha256": signature.sign(body, secret.encode()),
    }


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a real web or worker process of these settings runs with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINES_", "SHOPIFY_"))}
    env.update(
        REDIS_URL=settings.redis_url,
        SHOPIFY_WEBHOOK_SECRET=settings.shopify_webhook_secret.get_secret_value(),
        PIPELINES_WRITE_KEY=settings.pipelines_write_key.get_secret_value(),
        PIPELINES_URL=settings.pipelines_url,
        DRAIN_TIME_BUDGET_S=str(settings.drain_time_budget_s),
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
        # The Procfile's commands (gunicorn, bridge) live beside this interpreter.
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    )
    env.update(extra)
    return env


def start_worker(settings: Settings, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "worker"],
        env=service_env(settings, **extra),
        cwd=ROOT,
    )


@pytest.fixture
def worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """A real `bridge worker` process on these settings, stopped (SIGTERM) after the test."""
    proc = start_worker(settings)
    yield proc
    proc.terminate()
    proc.wait(40)


def wait_until(predicate: Any, timeout_s: float = 15.0, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
