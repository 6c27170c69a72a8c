"""The one place that knows job paths, ids and TTLs."""

from __future__ import annotations

from datetime import timedelta

from rq import Queue

DRAIN = "jobs.drain.drain_shop"
DELIVER = "jobs.deliver.deliver_shop"
# Jobs are bounded by their time budget; the timeout is a backstop for a wedged one.
JOB_TIMEOUT_S = 120


def enqueue_drain(queue: Queue, shop: str) -> None:
    queue.enqueue_call(DRAIN, args=(shop,), timeout=JOB_TIMEOUT_S, result_ttl=0, failure_ttl=86_400)


def jobs_waiting(queue: Queue) -> int:
    """How many jobs wait in the queue (one LLEN)."""
    return int(queue.count)


def enqueue_deliver(queue: Queue, shop: str, delay_s: float = 0.0) -> None:
    if delay_s > 0:
        queue.enqueue_in(
            timedelta(seconds=delay_s),
            DELIVER,
            shop,
            job_timeout=JOB_TIMEOUT_S,
            result_ttl=0,
            failure_ttl=86_400,
        )
    else:
        queue.enqueue_call(
            DELIVER, args=(shop,), timeout=JOB_TIMEOUT_S, result_ttl=0, failure_ttl=86_400
        )


SWEEP = "jobs.sweep.sweep"


CHECK = "jobs.check.check"  # issue 6: the periodic volume check (bridge/monitoring/monitor.py)


def enqueue_check(queue: Queue, delay_s: float) -> None:
    queue.enqueue_in(
        timedelta(seconds=delay_s),
        CHECK,
        job_timeout=JOB_TIMEOUT_S,
        result_ttl=0,
        failure_ttl=86_400,
    )
