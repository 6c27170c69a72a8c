"""The RQ worker process: a non-forking worker that reuses its connections across jobs.

A forking worker pays a fork and new connections for every job; this one keeps one Redis client
and one keep-alive HTTP client for its whole life. SIGTERM (a dyno restart) lets the current job
finish its batch (jobs check `stopping` between batches and requests) and then exits.

`run_worker` supervises RQ's work loop: RQ quits its loop on a Redis error outside the dequeue
(mid-job, in a heartbeat), so after a Redis restart the loop is started again once Redis answers,
and the process never exits for that. A ticker thread wakes shops whose jobs were lost (a killed
worker) or whose held calls are due for a retry, so retries never depend on RQ's scheduler.
Deliveries run on a thread of their own (bridge/worker/background.py) while the job loop drains.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any, TypeVar

from rq import SimpleWorker

from bridge.monitoring.monitor import ensure_scheduled as ensure_check_scheduled
from bridge.services import Services, install
from bridge.store import StoreError
from bridge.store.keys import SWEEP_SCHEDULED_KEY
from bridge.worker.background import BackgroundDelivery
from bridge.worker.queues import JOB_TIMEOUT_S
from bridge.worker.sweep import SWEEP_EVERY_S, schedule_sweep, tick

log = logging.getLogger(__name__)

REDIS_WAIT_MAX_S = 5.0
T = TypeVar("T")


class BridgeWorker(SimpleWorker):
    services: Services | None = None

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.services is not None:
            self.services.stopping.set()
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]


M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX does) before the worker starts threads.

    glibc gives each thread that allocates its own arena; the delivery thread's arena kept
    ~6 MB of freed memory beside the job loop's, which is peak RSS a dyno pays for. A no-op
    (False) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def log_start(services: Services) -> None:
    """One line saying what this worker is: version, Redis, queues, stores, delivery mode."""
    from bridge import __version__
    from bridge.cli import devstack  # local: devstack is a CLI helper

    s = services.settings
    registry = services.stores
    named = len(registry.stores)
    default = registry.default is not None
    stores = f"{named} from BRIDGE_STORES_FILE" if named else "none from a file"
    if default:
        stores += " + the default store"
    if s.dry_run:
        mode = f"dry run: calls are printed and appended to {s.dry_run_file}"
    else:
        mode = f"sending to {s.pipelines_url}"
    log.info(
        f"cartbridge worker {__version__} started: Redis {devstack.redacted(s.redis_url)}, "
        f"queue {s.queue_name}, stores: {stores}, delivery: {mode}"
    )


def check_redis_policy(services: Services) -> None:
    """Warn loudly when Redis may evict keys: an evicting Redis silently loses queued webhooks."""
    try:
        policy = services.store.eviction_policy()
    except Exception:
        return
    if policy and policy != "noeviction":
        log.warning(
            "Redis maxmemory-policy is %s, not noeviction: queued webhooks can be evicted", policy
        )


def check_api_version(services: Services) -> None:
    """Warn when SHOPIFY_API_VERSION is past Shopify's support window (payloads and Admin
    answers then silently come in the oldest supported version instead)."""
    from bridge.backfill.admin import version_warning

    warning = version_warning(services.settings.shopify_api_version, datetime.now(UTC).date())
    if warning:
        log.warning(warning)


def wait_for_redis(services: Services) -> bool:
    """Block until Redis answers a PING (True) or the process is asked to stop (False)."""

    def ping() -> bool:
        services.store.ping()
        return True

    return _until_redis_answers(ping, services.stopping) is True


def _until_redis_answers(attempt: Callable[[], T], stopping: threading.Event) -> T | None:
    """`attempt()`'s result once it raises no StoreError; None if `stopping` is set first. One
    error line an outage, tries further and further apart (up to REDIS_WAIT_MAX_S)."""
    delay = 0.2
    logged = False
    while not stopping.is_set():
        try:
            result = attempt()
        except StoreError as exc:
            if not logged:
                log.error("Redis unavailable; the worker waits for it", extra={"error": str(exc)})
                logged = True
        else:
            if logged:
                log.warning("Redis is back; the worker goes on")
            return result
        stopping.wait(delay)
        delay = min(delay * 2, REDIS_WAIT_MAX_S)
    return None


def run_worker(services: Services, *, burst: bool = False, **work_kwargs: Any) -> bool:
    """Work until SIGTERM (or, with `burst`, until the queue is empty); survives Redis restarts."""
    install(services)
    services.deliverer = BackgroundDelivery(services)
    try:
        return _work(services, burst=burst, **work_kwargs)
    finally:
        if burst and not services.stopping.is_set():
            services.deliverer.wait_idle(JOB_TIMEOUT_S)
        services.deliverer.close()
        services.deliverer = None
        try:
            services.store.flush_counters(force=True)  # the last second's counters
        except StoreError:
            log.warning("counters of the last second not written: Redis is away")


def _work(services: Services, *, burst: bool, **work_kwargs: Any) -> bool:
    def stop_between_loops(signum: int, frame: FrameType | None) -> None:
        services.stopping.set()

    # RQ logs several lines per job at INFO; at our job rate they would drown the bridge's own.
    kwargs = {"logging_level": "WARNING", **work_kwargs}
    ticker: threading.Thread | None = None
    worker: BridgeWorker | None = None
    worked = False
    while True:
        # RQ installs its own handlers inside work(); between two loops a SIGTERM just stops.
        signal.signal(signal.SIGTERM, stop_between_loops)
        signal.signal(signal.SIGINT, stop_between_loops)
        if not wait_for_redis(services):
            return worked
        try:
            check_redis_policy(services)
            check_api_version(services)
            worker = BridgeWorker([services.queue], connection=services.queue.connection)
            worker.services = services
            if not burst:
                if services.store.claim(SWEEP_SCHEDULED_KEY, SWEEP_EVERY_S * 4):
                    schedule_sweep(services)
                ensure_check_scheduled(services)  # issue 6: the periodic volume check
                if ticker is None:
                    ticker = threading.Thread(
                        target=tick, args=(services,), name="ticker", daemon=True
                    )
                    ticker.start()
            worked = bool(worker.work(burst=burst, with_scheduler=not burst, **kwargs)) or worked
        except StoreError as exc:
            log.warning("worker loop ended on a Redis error", extra={"error": str(exc)})
        if burst or services.stopping.is_set() or getattr(worker, "_stop_requested", False):
            return worked
        # RQ left its loop without being asked to (it does on a Redis error mid-job): go again.
        log.warning("worker loop ended unexpectedly; restarting it when Redis answers")
        services.stopping.wait(0.5)
