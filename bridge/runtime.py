"""The long-lived objects a worker process reuses across jobs (built once per process).

RQ job functions take only JSON-safe arguments, so they find their Redis client, queue and
Pipelines client here instead of building new ones (and new connections) for every job.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis
from rq import Queue

from bridge.delivery import Sink, make_sink
from bridge.settings import Settings, load_settings
from bridge.sources import Source
from bridge.sources.shopify import ShopifySource
from bridge.store import Store, connect


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis[bytes]
    store: Store
    queue: Queue
    sink: Sink
    source: Source
    stopping: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        client = connect(settings.redis_url, tls_verify=settings.redis_tls_verify)
        return cls(
            settings=settings,
            redis=client,
            store=Store(client),
            queue=Queue(settings.queue_name, connection=client),
            sink=make_sink(settings),
            source=ShopifySource(),
        )


_lock = threading.Lock()
_current: Runtime | None = None


def runtime() -> Runtime:
    """This process's Runtime, built from the environment on first use."""
    global _current
    with _lock:
        if _current is None:
            _current = Runtime.build(load_settings())
        return _current


def install(rt: Runtime) -> None:
    """Make `rt` this process's Runtime (the worker command builds it before working)."""
    global _current
    with _lock:
        _current = rt
