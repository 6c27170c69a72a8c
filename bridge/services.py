"""The composition root: what one process (the web app, a worker, a CLI command) shares.

`Services.build(settings)` is called once per process and connects the parts: the Redis client
of RQ's queues (REDIS_URL), the store facade over the bridge's data (`open_store`: the same
Redis, or the Redis Cluster DATA_REDIS_URL names), the RQ queue, the stores registry, the
source, and one sink per Pipelines workspace. Nothing here decides anything. Parts take what
they need from it; RQ job functions (jobs/), which get only JSON-safe arguments, find their
process's `Services` through `current()`.

A shop's configuration as the worker uses it (its store and processing rules)
is built once per shop per process: `Services.shop(shop)`; its sink once per workspace.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

import redis
from rq import Queue

from bridge.config.settings import Settings, load_settings
from bridge.config.stores import StoreConfig, StoreRegistry, stores_for
from bridge.delivery.sinks import Sink, make_sink
from bridge.identity import configure_email_hash
from bridge.sources import Source, Sources
from bridge.sources.pixel import PixelSource
from bridge.sources.recharge import RechargeSource
from bridge.sources.shopify import ShopifySource
from bridge.store.facade import Store, connect, open_store
from bridge.worker.processor import ProcessConfig
from bridge.worker.queues import enqueue_deliver


class Deliverer(Protocol):
    """Delivers shops handed to it (the worker's delivery thread, worker/background.py)."""

    def submit(self, shop: str) -> None: ...


@dataclass(frozen=True)
class ShopContext:
    """One shop's configuration as the worker uses it, built once per process (`Services.shop`).

    `config` is None for a shop no store serves (its webhooks were never accepted, but its
    queued work may still be delivered or erased); it then runs on the environment's settings.
    """

    shop: str
    config: StoreConfig | None
    rules: ProcessConfig


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis[bytes]
    store: Store
    queue: Queue
    source: Source
    stores: StoreRegistry
    stopping: threading.Event = field(default_factory=threading.Event)
    # A worker process delivers on a thread of its own; None elsewhere (RQ jobs deliver).
    deliverer: Deliverer | None = None
    _shops: dict[str, ShopContext] = field(default_factory=dict)
    _sinks: dict[str, Sink] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # The default store's sink, built on first use: a web process never delivers, so it never
    # builds an HTTP client.
    _sink: Sink | None = None

    @classmethod
    def build(cls, settings: Settings, *, timeout_s: float = 5.0) -> Services:
        """Connect everything from `settings` (the web passes a short Redis `timeout_s`).
        Raises ConfigError for an invalid stores file."""
        stores = stores_for(settings)
        client = connect(
            settings.redis_url, tls_verify=settings.redis_tls_verify, timeout_s=timeout_s
        )
        # The identity hash key names email records and delivery's person names alike.
        configure_email_hash(settings.email_hash_key)
        return cls(
            settings=settings,
            redis=client,
            store=open_store(settings, timeout_s=timeout_s, client=client),
            queue=Queue(settings.queue_name, connection=client),
            # Envelope topics "recharge/..." go to Recharge's source, the rest to Shopify's.
            # ... "pixel/..." (storefront browse events, issue 17) to the pixel's.
            source=Sources(ShopifySource(), recharge=RechargeSource(), pixel=PixelSource()),
            stores=stores,
        )

    @property
    def sink(self) -> Sink:
        """The sink of the default store (the environment's Pipelines settings)."""
        if self._sink is None:
            with self._lock:
                if self._sink is None:
                    self._sink = make_sink(self.settings)
        return self._sink

    @sink.setter
    def sink(self, sink: Sink) -> None:
        self._sink = sink

    def deliver_soon(self, shop: str) -> None:
        """Have the shop's outbox delivered: by this worker's delivery thread when it has one,
        else by an RQ job. Callers set the shop's pending flag first (`Store.wake`)."""
        if self.deliverer is not None:
            self.deliverer.submit(shop)
        else:
            enqueue_deliver(self.queue, shop)

    def store_config(self, shop: str) -> StoreConfig | None:
        """The shop's StoreConfig (or the default store's); None for an unknown shop."""
        return self.stores.get(shop)

    def shop(self, shop: str) -> ShopContext:
        """The shop's context, built on first use and then reused."""
        context = self._shops.get(shop)
        if context is None:
            with self._lock:
                context = self._shops.get(shop)
                if context is None:
                    context = self._build_shop(shop)
                    self._shops[shop] = context
        return context

    def sink_for(self, shop: str) -> Sink:
        """The sink for this shop's Pipelines workspace: a shop the stores file names gets a
        client with its own write key and URL (built once, then reused), any other shop `sink`."""
        config = self.shop(shop).config
        if config is None or config.is_default:
            return self.sink
        with self._lock:
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

    def _build_shop(self, shop: str) -> ShopContext:
        config = self.store_config(shop)
        return ShopContext(
            shop=shop,
            config=config,
            rules=ProcessConfig.for_shop(self.settings, config),
        )


_current_lock = threading.Lock()
_current: Services | None = None


def current() -> Services:
    """This process's Services (for RQ job functions), built from the environment on first use."""
    global _current
    with _current_lock:
        if _current is None:
            _current = Services.build(load_settings())
        return _current


def install(services: Services) -> None:
    """Make `services` this process's (the worker command builds it before working)."""
    global _current
    with _current_lock:
        _current = services
