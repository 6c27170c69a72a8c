"""A short lease kept alive by a background thread while its holder works.

A lease that lives only as long as its process (renewed every TTL/4) lets another worker take
over a SIGKILLed worker's shop within one TTL, instead of waiting out a long fixed lease.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Self, TypeVar

import redis

from bridge.store.facade import Store

log = logging.getLogger(__name__)

LEASE_TTL_MS = 10_000

T = TypeVar("T")


class Lease:
    """`with Lease(store, key) as lease:` — `lease.held` says whether it was acquired, `lease.lost`
    whether another holder took it since (then stop and write nothing)."""

    def __init__(self, store: Store, key: str, ttl_ms: int = LEASE_TTL_MS) -> None:
        self.store = store
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = uuid.uuid4().hex
        self.held = False
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self.held = self.store.acquire(self.key, self.token, self.ttl_ms)
        if self.held:
            self._thread = threading.Thread(target=self._keep, name="lease", daemon=True)
            self._thread.start()
        return self

    def still_held(self) -> bool:
        """Whether the lease is this holder's in Redis now, and so has been since it was taken.
        Unlike `lost`, which the keeper sets at its next renewal, this is exact. Raises redis
        errors."""
        return self.held and self.store.holds(self.key, self.token)

    def release_with(self, release: Callable[[str], T]) -> T:
        """Stop renewing and let the lease go by `release(token)`, a script that does other
        work too (`Store.finish_deliver`); if it raises, `__exit__` still lets the lease go."""
        self._stop_keeping()
        outcome = release(self.token)
        self.held = False  # let go by `release`: __exit__ releases nothing
        return outcome

    def _stop_keeping(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _keep(self) -> None:
        while not self._stop.wait(self.ttl_ms / 4000):
            try:
                if not self.store.renew(self.key, self.token, self.ttl_ms):
                    self.lost.set()
                    return
            except redis.RedisError:
                continue  # Redis is away; the holder's own calls fail too and it stops

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_keeping()
        if self.held:
            try:
                self.store.release(self.key, self.token)
            except redis.RedisError:
                log.warning("lease not released; it expires on its own", extra={"key": self.key})
