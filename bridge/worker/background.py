"""Delivery on a thread of the worker process, beside the RQ job loop.

Delivering a window is mostly waiting: for Pipelines to answer each POST, for Redis to settle
it. As an RQ job of its own it kept the worker from draining meanwhile (~60 us of a webhook's
~520 us went to waiting). Here a drain's calls are handed to this thread, which sends them while
the job loop drains the next batch. Nothing about delivery's guarantees changes: `deliver()`
still takes the shop's delivery lease, works on windows kept in Redis and settles them there,
so a worker killed mid-delivery loses nothing (the lease expires, the pending flag expires and
any worker's ticker wakes the shop again). A delivery that fails on a Redis error is retried
by the thread itself, backing off, rather than after the pending flag expires.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from bridge.delivery.deliver import deliver

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)

# After a failed delivery (Redis away), the shop is tried again after 0.5 s, doubling to 10 s.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0


class BackgroundDelivery:
    """One thread that delivers the shops handed to it, each shop at most once at a time."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._pending: dict[str, None] = {}  # an ordered set: shops in the order handed over
        self._busy = False
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)
        self._thread.start()

    def submit(self, shop: str) -> None:
        with self._changed:
            self._pending[shop] = None
            self._changed.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until nothing is pending or running (True), or `timeout_s` ran out."""
        with self._changed:
            return self._changed.wait_for(
                lambda: (not self._pending and not self._busy) or self._closed, timeout_s
            )

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking shops and wait for the delivery in progress (it stops at its next check
        of `services.stopping`, or when its outbox is empty)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        failures = 0
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._pending) or self._closed)
                if self._closed:
                    self._pending.clear()
                    self._changed.notify_all()
                    return
                shop = next(iter(self._pending))
                del self._pending[shop]
                self._busy = True
            try:
                deliver(self.services, shop)
                failures = 0
            except Exception as exc:
                # A Redis error mid-round (a restart, a failover): the window stays in Redis,
                # and so does the shop's pending flag, which keeps other wake-ups away. This
                # thread is the shop's deliverer, so it goes again itself, backing off.
                failures += 1
                delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (failures - 1))
                log.warning(
                    "background delivery failed; trying again",
                    extra={"shop": shop, "error": type(exc).__name__, "retry_in_s": delay},
                )
                self._retry_later(shop, delay)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()

    def _retry_later(self, shop: str, delay_s: float) -> None:
        with self._changed:
            if self._changed.wait_for(lambda: self._closed, delay_s):
                return
            self._pending[shop] = None
