"""Delivery: the shop's outbox, in /v1/batch requests of up to 500 KB, with failure handling.

Failure handling (the error classes come from `bridge.pipelines`):
- retryable (network, timeout, 408, 429, 5xx): the batch stays in flight and the job comes back
  after a jittered backoff (honouring Retry-After) until the retry horizon, then dead letters;
- 413: the batch is split; 400 (strict mode names no call): split until the bad call is alone,
  then only that call is dead-lettered (calls re-sent on the way keep their messageIds);
- 401/403: the shop is paused with its calls kept, and probed until the key works again.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import orjson

from bridge import pipelines
from bridge.calls import BATCH_ENVELOPE_BYTES, MAX_BATCH_BYTES
from bridge.outbox import OutboxEntry
from bridge.settings import Settings
from bridge.store import Keys, now_ms
from jobs.enqueue import enqueue_deliver

if TYPE_CHECKING:
    from bridge.runtime import Runtime

log = logging.getLogger(__name__)

LEASE_MS = 120_000
MAX_CALLS_PER_BATCH = 2000
PAUSE_PROBE_S = 60.0
LATENCY_BUCKETS_MS = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 60000)


class Sink(Protocol):
    def send_batch(self, calls: Sequence[bytes]) -> None: ...

    def send_alias(self, call: bytes) -> None: ...

    def probe(self) -> None: ...


class DryRunSink:
    """Prints every call and appends it to a JSONL file instead of sending it."""

    def __init__(self, path: str, echo: bool = True) -> None:
        self.path = path
        self.echo = echo
        self._lock = threading.Lock()

    def send_batch(self, calls: Sequence[bytes]) -> None:
        with self._lock, open(self.path, "ab") as fh:
            for call in calls:
                fh.write(call + b"\n")
                if self.echo:
                    sys.stdout.write("[dry-run] " + call.decode() + "\n")
        if self.echo:
            sys.stdout.flush()

    def send_alias(self, call: bytes) -> None:
        self.send_batch([call])

    def probe(self) -> None:
        return None


def make_sink(settings: Settings) -> Sink:
    if settings.dry_run:
        return DryRunSink(settings.dry_run_file)
    return pipelines.PipelinesClient(
        settings.pipelines_url,
        settings.pipelines_write_key.get_secret_value(),
        timeout_s=settings.http_timeout_s,
    )


class _Retry(Exception):
    def __init__(self, err: pipelines.RetryableError, remaining: list[bytes]) -> None:
        self.err = err
        self.remaining = remaining


class _Paused(Exception):
    def __init__(self, err: pipelines.AuthError) -> None:
        self.err = err


class _Attempt:
    """One pass over an in-flight batch: what was delivered, dead-lettered, and counted."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.delivered: list[bytes] = []
        self.dead: list[tuple[bytes, str, int | None, str]] = []

    def send(self, entries: list[bytes]) -> None:
        calls = [OutboxEntry.decode(e).call for e in entries]
        try:
            self.sink.send_batch(calls)
        except pipelines.RetryableError as err:
            raise _Retry(err, entries) from None
        except pipelines.AuthError as err:
            raise _Paused(err) from None
        except (pipelines.PayloadTooLargeError, pipelines.BadRequestError) as err:
            if len(entries) == 1:
                self.dead.append((entries[0], type(err).__name__, err.status, err.body))
                return
            half = len(entries) // 2
            for part in (entries[:half], entries[half:]):
                try:
                    self.send(part)
                except _Retry as r:
                    done = set(self.delivered) | {d[0] for d in self.dead}
                    r.remaining = [e for e in entries if e not in done]
                    raise
            return
        except pipelines.FatalError as err:
            for e in entries:
                self.dead.append((e, type(err).__name__, err.status, err.body))
            return
        self.delivered.extend(entries)


def _latency_counters(entries: Sequence[bytes], now: int) -> dict[str, int]:
    counters: dict[str, int] = {}
    for e in entries:
        received = OutboxEntry.decode(e).received_ms
        if received:
            ms = max(0, now - received)
            counters["latency_ms_sum"] = counters.get("latency_ms_sum", 0) + ms
            counters["latency_count"] = counters.get("latency_count", 0) + 1
            for b in LATENCY_BUCKETS_MS:
                if ms <= b:
                    counters[f"latency_le_{b}"] = counters.get(f"latency_le_{b}", 0) + 1
    counters["calls:delivered"] = len(entries)
    return counters


def dead_letter_record(entry: bytes, reason: str, status: int | None, body: str) -> bytes:
    call = OutboxEntry.decode(entry).call
    return orjson.dumps(
        {
            "kind": "call",
            "reason": reason,
            "status": status,
            "response": body[:2048],
            "at_ms": now_ms(),
            "call": orjson.loads(call),
        }
    )


def deliver(rt: Runtime, shop: str) -> None:
    """Send the shop's outbox until empty, out of time, paused or waiting for a retry."""
    keys = Keys(shop)
    token = uuid.uuid4().hex
    if not rt.store.acquire(keys.deliver_lease, token, LEASE_MS):
        return
    deadline = time.monotonic() + rt.settings.drain_time_budget_s
    retry_in: float | None = None
    try:
        if rt.redis.exists(keys.prefix + "paused"):
            try:
                rt.sink_for(shop).probe()
            except pipelines.PipelinesError:
                retry_in = PAUSE_PROBE_S
            else:
                log.warning("Pipelines accepts the write key again: delivery resumed")
                rt.redis.delete(keys.prefix + "paused")
        while retry_in is None and not rt.stopping.is_set():
            entries = rt.store.take_outbox(
                shop, MAX_BATCH_BYTES - BATCH_ENVELOPE_BYTES, MAX_CALLS_PER_BATCH
            )
            if not entries:
                break
            retry_in = _send(rt, shop, entries)
            if retry_in is not None:
                break
            rt.store.renew(keys.deliver_lease, token, LEASE_MS)
            if time.monotonic() > deadline:
                break
    finally:
        rt.store.release(keys.deliver_lease, token)
    if retry_in is not None:
        enqueue_deliver(rt.queue, shop, delay_s=retry_in)
    elif rt.store.finish_deliver(shop):
        enqueue_deliver(rt.queue, shop)


def _send(rt: Runtime, shop: str, entries: list[bytes]) -> float | None:
    """Deliver one in-flight batch; returns seconds until a retry, or None when it is settled."""
    keys = Keys(shop)
    entries = _drop_guarded(rt, shop, entries)
    if not entries:
        rt.store.ack_outbox(shop, {})
        return None
    attempt = _Attempt(rt.sink_for(shop))
    retry: _Retry | None = None
    paused: _Paused | None = None
    try:
        attempt.send(entries)
    except _Retry as r:
        retry = r
    except _Paused as p:
        paused = p
    if attempt.dead:
        for _entry, reason, status, _body in attempt.dead:
            log.error(
                "call dead-lettered",
                extra={"shop": shop, "reason": reason, "status": status},
            )
        rt.redis.rpush(keys.parked, *(dead_letter_record(*d) for d in attempt.dead))
        rt.store.count(shop, "calls:dead_lettered", len(attempt.dead))
    if retry is None and paused is None:
        rt.store.ack_outbox(shop, _latency_counters(attempt.delivered, now_ms()))
        rt.redis.delete(keys.prefix + "out:retry")
        return None
    done = set(attempt.delivered) | {d[0] for d in attempt.dead}
    remaining = [e for e in entries if e not in done]
    rt.store.replace_outbox_work(shop, remaining)
    if attempt.delivered:
        rt.store.count(shop, "calls:delivered", len(attempt.delivered))
    if paused is not None:
        log.error("Pipelines rejected the write key: delivery paused", extra={"shop": shop})
        rt.redis.set(keys.prefix + "paused", now_ms())
        return PAUSE_PROBE_S
    assert retry is not None
    return _schedule_retry(rt, shop, retry)


def _drop_guarded(rt: Runtime, shop: str, entries: list[bytes]) -> list[bytes]:
    """Re-check, just before the POST, whether a queued call has been overtaken (a converted
    cart): such calls are counted as suppressed and not sent."""
    decoded = [OutboxEntry.decode(e) for e in entries]
    guards = sorted({g for d in decoded for g in d.guards})
    if not guards:
        return entries
    keys = Keys(shop)
    hit = {
        g for g, v in zip(guards, rt.redis.mget([keys.state(g) for g in guards]), strict=True) if v
    }
    if not hit:
        return entries
    kept: list[bytes] = []
    suppressed: dict[str, int] = {}
    for raw, d in zip(entries, decoded, strict=True):
        if hit.intersection(d.guards):
            name = orjson.loads(d.call).get("event") or "call"
            suppressed[f"events:{name}:suppressed"] = (
                suppressed.get(f"events:{name}:suppressed", 0) + 1
            )
        else:
            kept.append(raw)
    if len(kept) != len(entries):
        rt.store.replace_outbox_work(shop, kept)
        for name, n in suppressed.items():
            rt.store.count(shop, name, n)
    return kept


def _schedule_retry(rt: Runtime, shop: str, retry: _Retry) -> float | None:
    keys = Keys(shop)
    key = keys.prefix + "out:retry"
    state = rt.redis.hgetall(key)
    attempts = int(state.get(b"attempts", 0)) + 1
    first = int(state.get(b"first_ms", now_ms()))
    if now_ms() - first > rt.settings.retry_horizon_s * 1000:
        rt.redis.rpush(
            keys.parked,
            *(
                dead_letter_record(e, "retry horizon passed", retry.err.status, retry.err.body)
                for e in retry.remaining
            ),
        )
        rt.store.replace_outbox_work(shop, [])
        rt.redis.delete(key)
        rt.store.count(shop, "calls:dead_lettered", len(retry.remaining))
        return None
    rt.redis.hset(key, mapping={"attempts": attempts, "first_ms": first, "last_ms": now_ms()})
    rt.store.count(shop, "deliver:retries")
    delay = pipelines.retry_delay_s(retry.err, attempts)
    log.warning(
        "delivery failed, will retry",
        extra={"shop": shop, "status": retry.err.status, "attempt": attempts, "delay_s": delay},
    )
    return delay
