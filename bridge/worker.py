"""The RQ worker process: a non-forking worker that reuses its connections across jobs.

A forking worker pays a fork and new connections for every job; this one keeps one Redis client
and one keep-alive HTTP client for its whole life. SIGTERM (a dyno restart) lets the current job
finish its batch (jobs check `stopping` between batches) and then exits.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from types import FrameType
from typing import Any

from rq import SimpleWorker

from bridge.runtime import Runtime, install
from bridge.store import Keys

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 15


class BridgeWorker(SimpleWorker):
    runtime: Runtime | None = None

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.runtime is not None:
            self.runtime.stopping.set()
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]


def check_redis_policy(rt: Runtime) -> None:
    """Warn loudly when Redis may evict keys: an evicting Redis silently loses queued webhooks."""
    try:
        policy = rt.redis.config_get("maxmemory-policy").get("maxmemory-policy")
    except Exception:
        return
    if policy and policy != "noeviction":
        log.warning(
            "Redis maxmemory-policy is %s, not noeviction: queued webhooks can be evicted", policy
        )


def schedule_sweep(rt: Runtime) -> None:
    from jobs.enqueue import SWEEP  # local: avoids an import cycle at module load

    rt.queue.enqueue_in(timedelta(seconds=SWEEP_EVERY_S), SWEEP, result_ttl=0, failure_ttl=3600)


def run_worker(rt: Runtime, *, burst: bool = False, **work_kwargs: Any) -> bool:
    install(rt)
    check_redis_policy(rt)
    worker = BridgeWorker([rt.queue], connection=rt.redis)
    worker.runtime = rt
    if not burst and rt.redis.set("cb:sweep:scheduled", "1", nx=True, ex=SWEEP_EVERY_S * 4):
        schedule_sweep(rt)
    return bool(worker.work(burst=burst, with_scheduler=not burst, **work_kwargs))


def sweep(rt: Runtime) -> None:
    """Wake drains and deliveries whose pending job was lost, expire held identity work (once a
    minute per shop), then schedule the next sweep."""
    from bridge.identity.housekeeping import housekeep, housekeep_due
    from jobs.enqueue import enqueue_deliver, enqueue_drain

    for shop in rt.store.shops():
        keys = Keys(shop)
        depth = rt.store.depth(shop)
        if depth["inbound"] and rt.store.wake(keys.drain_flag):
            enqueue_drain(rt.queue, shop)
        if depth["outbox"] and rt.store.wake(keys.deliver_flag):
            enqueue_deliver(rt.queue, shop)
        if housekeep_due(rt, shop):
            housekeep(rt, shop)
    rt.redis.set("cb:sweep:scheduled", "1", ex=SWEEP_EVERY_S * 4)
    schedule_sweep(rt)
