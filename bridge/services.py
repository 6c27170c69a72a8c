"""The long-lived objects a worker process reuses across jobs (built once per process).

RQ job functions take only JSON-safe arguments, so they find their Redis client, queue and
Pipelines client here instead of building new ones (and new connections) for every job.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
from rq import Queue

from bridge.config.settings import Settings, load_settings
from bridge.config.stores import StoreConfig, StoreRegistry, stores_for
from bridge.delivery.deliver import Sink, make_sink
from bridge.identity import configure_email_hash
from bridge.sources import Source
from bridge.sources.shopify import ShopifySource
from bridge.store.facade import Store, connect
from bridge.worker.queues import enqueue_deliver

if TYPE_CHECKING:
    from bridge.worker.background import BackgroundDelivery


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis[bytes]
    store: Store
    queue: Queue
    sink: Sink
    source: Source
    stopping: threading.Event = field(default_factory=threading.Event)
    stores: StoreRegistry | None = None
    _sinks: dict[str, Sink] = field(default_factory=dict)
    _sinks_lock: threading.Lock = field(default_factory=threading.Lock)
    # A worker process delivers on a thread of its own (worker/background.py); None elsewhere.
    deliverer: BackgroundDelivery | None = None

    def deliver_soon(self, shop: str) -> None:
        """Have the shop's outbox delivered: by this worker's delivery thread when it has one,
        else by an RQ job. Callers set the shop's pending flag first (`Store.wake`)."""
        if self.deliverer is not None:
            self.deliverer.submit(shop)
        else:
            enqueue_deliver(self.queue, shop)

    def store_config(self, shop: str) -> StoreConfig | None:
        """The shop's StoreConfig (or the default store's); None for an unknown shop."""
        return (self.stores or stores_for(self.settings)).get(shop)

    def sink_for(self, shop: str) -> Sink:
        """The sink for this shop's Pipelines workspace (built once per shop, then reused).

        A shop the stores file names gets a client with its own write key and URL; any other
        shop (the default store) uses `sink`, built from the environment settings.
        """
        config = self.store_config(shop)
        if config is None or config.is_default:
            return self.sink
        with self._sinks_lock:
            sink = self._sinks.get(config.shop)
            if sink is None:
                sink = make_sink(
                    self.settings.model_copy(
                        update={
                            "pipelines_write_key": config.pipelines_write_key,
                            "pipelines_url": config.pipelines_url,
                            "pipelines_dry_run": config.dry_run,
                        }
                    )
                )
                self._sinks[config.shop] = sink
            return sink

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        client = connect(settings.redis_url, tls_verify=settings.redis_tls_verify)
        configure_email_hash(settings.email_hash_key)
        return cls(
            settings=settings,
            redis=client,
            store=Store(client),
            queue=Queue(settings.queue_name, connection=client),
            sink=make_sink(settings),
            source=ShopifySource(),
            stores=stores_for(settings),
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
