"""Delivery: a shop's outbox to Pipelines, batched across webhooks, several POSTs in flight, with
per-person order, retries, dead letters and a pause when the write key is refused.

One deliverer per shop at a time (a short lease kept alive by a thread). It takes a window of
calls into `cb:{shop}:out:work` (store.take_window), sends it in rounds and settles each round in
one MULTI (store.settle_outbox): until then the window stays in Redis, so a crash at any instant
means the window is sent again with the same messageIds (at-least-once, never a loss).

An erasure wins over a delivery in flight (`Gate`): an erasure of the shop's data runs holding
the delivery lease (erasure.py), so no window is held in memory while it runs. Before each
request the deliverer checks in Redis that the lease is still its own and that no erasure waits
for it; when one does, it ends the round, settles it (the calls go back to Redis, where the
erasure finds them) and lets the lease go. A deliverer whose lease ran out while a request was
in flight (renewals not getting through) sends nothing more, and its settle is refused.

Per-person order: a window's calls are grouped by person (the outbox header's `p`), each person's
calls in order, cut into segments (a run of batch calls, or one alias call alone). A phase sends
the first segment of every person, packed into /v1/batch requests of up to 500 KB that run
concurrently; the next phase sends the next segments of the people whose previous one went
through. A person whose request fails with a retryable error waits: that person's calls move to
a per-person hold list with a due time, and later calls of that person join the list, while
other people go on.

Failures come classified from `bridge.delivery.pipelines` (its `classify` is the only place that
decides):
- RetryableError (network, timeout, 408, 429, 5xx): the people in the request wait, with full
  jitter exponential backoff or the server's Retry-After; past `retry_horizon_s` since their
  first failure their calls are dead-lettered;
- PayloadTooLargeError (413) and BadRequestError (400 in strict mode, which names no call): the
  request is split in halves until the bad call is alone; only it is dead-lettered (calls sent
  again on the way keep their messageIds);
- AuthError (401/403) and EndpointError (404, 405, a redirect, an HTML page: a wrong
  PIPELINES_URL): the shop is paused with its calls kept in the window, one error is logged
  naming the setting to fix, `delivery:paused` is counted and `cb:{shop}:paused` holds the pause
  time; delivery resumes by itself when a probe succeeds or the write key or URL changes;
- FatalError (other 4xx): the request's calls are dead-lettered.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from bridge.config.settings import US_PIPELINES_URL
from bridge.delivery import deadletters, pipelines
from bridge.delivery.calls import BATCH_ENVELOPE_BYTES, MAX_BATCH_BYTES, USER_DELETED
from bridge.delivery.outbox import OutboxEntry
from bridge.delivery.sinks import Sink
from bridge.logs import redact
from bridge.store import StoreError, wire
from bridge.store import ops as ops_records
from bridge.store.facade import Keys, LeaseLost, Settlement, now_ms
from bridge.store.lease import Lease

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)

MIN_RETRY_DELAY_MS = 200

MAX_CALLS_PER_BATCH = 2000
BATCH_BYTES = MAX_BATCH_BYTES - BATCH_ENVELOPE_BYTES
LATENCY_BUCKETS_MS = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 60000)
ALIAS = "alias"


def pipelines_url(services: Services, shop: str) -> str:
    """The Pipelines base URL the shop's calls go to."""
    config = services.store_config(shop)
    if config is not None and not config.is_default:
        return config.pipelines_url
    return services.settings.pipelines_url


def key_fingerprint(services: Services, shop: str) -> str:
    """A short hash of the shop's write key and Pipelines URL: tells changed settings from the
    refused ones (a pause resumes at once when either changed), reveals nothing."""
    config = services.store_config(shop)
    key = config.pipelines_write_key.get_secret_value() if config is not None else ""
    key = key or services.settings.pipelines_write_key.get_secret_value()
    return hashlib.sha256(f"{key}\x1f{pipelines_url(services, shop)}".encode()).hexdigest()[:12]


# --- one window: pure planning ---------------------------------------------------------------


@dataclass(slots=True)
class Item:
    """One call of the window: its raw outbox entry, decoded header, and place in the window.
    Not changed once built (not frozen: a frozen dataclass costs ~3x to build, per call)."""

    raw: bytes
    entry: OutboxEntry
    index: int
    person: str  # the person's name in the retry bookkeeping (OutboxEntry.hold_name)

    @property
    def size(self) -> int:
        return len(self.entry.call) + 1


@dataclass
class Segment:
    kind: str  # "batch" or "alias"
    items: list[Item] = field(default_factory=list)
    size: int = 0


def segments_by_person(
    items: Sequence[Item], max_bytes: int = BATCH_BYTES, max_calls: int = MAX_CALLS_PER_BATCH
) -> dict[str, deque[Segment]]:
    """Each person's calls in order, cut into segments: runs of batch calls that fit one request,
    and every alias call alone. Pure; dict order is first appearance in the window."""
    out: dict[str, deque[Segment]] = {}
    for it in items:
        q = out.get(it.person)
        if q is None:
            q = out[it.person] = deque()
        size = len(it.entry.call) + 1  # `Item.size`, once
        if it.entry.kind == ALIAS:
            q.append(Segment(ALIAS, [it], size))
            continue
        last = q[-1] if q else None
        if (
            last is None
            or last.kind == ALIAS
            or last.size + size > max_bytes
            or len(last.items) >= max_calls
        ):
            last = Segment("batch")
            q.append(last)
        last.items.append(it)
        last.size += size
    return out


def pack(
    heads: Sequence[Segment], max_bytes: int = BATCH_BYTES, max_calls: int = MAX_CALLS_PER_BATCH
) -> list[Segment]:
    """Requests for one phase: batch segments packed in order up to the limits, each alias
    segment its own request. A segment is never split across requests. Pure."""
    jobs: list[Segment] = []
    current: Segment | None = None
    for seg in heads:
        if seg.kind == ALIAS:
            jobs.append(seg)
            continue
        if (
            current is None
            or current.size + seg.size > max_bytes
            or len(current.items) + len(seg.items) > max_calls
        ):
            current = Segment("batch")
            jobs.append(current)
        current.items.extend(seg.items)
        current.size += seg.size
    return jobs


@dataclass
class Sent:
    """What became of one request's calls."""

    delivered: list[Item] = field(default_factory=list)
    dead: list[tuple[Item, pipelines.PipelinesError]] = field(default_factory=list)
    waiting: list[Item] = field(default_factory=list)  # retryable failure: these people wait
    retry: pipelines.RetryableError | None = None
    unsent: list[Item] = field(default_factory=list)  # not tried: paused or stopping
    auth: pipelines.ConfigurationError | None = None  # a refused key or a wrong URL
    requests: int = 0


def send_request(sink: Sink, job: Segment, stopping: Callable[[], bool]) -> Sent:
    """Send one request, splitting it on 413/400 until a bad call is alone. Never raises a
    PipelinesError; other exceptions (a broken sink) propagate."""
    out = Sent()

    def attempt(items: list[Item]) -> bool:
        """True to go on with the rest, False once the request must stop (retry, auth, stop)."""
        if stopping():
            out.unsent.extend(items)
            return False
        out.requests += 1
        try:
            if job.kind == ALIAS:
                sink.send_alias(items[0].entry.call)
            else:
                sink.send_batch([i.entry.call for i in items])
        except pipelines.RetryableError as err:
            out.waiting.extend(items)
            out.retry = err
            return False
        except pipelines.ConfigurationError as err:
            out.unsent.extend(items)
            out.auth = err
            return False
        except (pipelines.PayloadTooLargeError, pipelines.BadRequestError) as err:
            if len(items) == 1:
                out.dead.append((items[0], err))
                return True
            half = len(items) // 2
            if not attempt(items[:half]):
                rest = items[half:]
                (out.waiting if out.retry is not None else out.unsent).extend(rest)
                return False
            return attempt(items[half:])
        except pipelines.PipelinesError as err:  # FatalError and anything unforeseen
            out.dead.extend((i, err) for i in items)
            return True
        out.delivered.extend(items)
        return True

    attempt(list(job.items))
    return out


@dataclass
class RetryState:
    attempts: int = 0
    first_ms: int = 0

    @classmethod
    def decode(cls, raw: bytes | None) -> RetryState:
        """Raises msgspec.DecodeError when `raw` is not a retry state record."""
        if not raw:
            return cls()
        d = wire.decode_retry_state(raw)
        return cls(d.attempts, d.first_ms)

    def encode(self, last_ms: int, status: int | None) -> bytes:
        return wire.encode_retry_state(
            wire.RetryRecord(self.attempts, self.first_ms, last_ms, status)
        )


# The bucket counters' names, formatted once (not twice per call delivered).
_LATENCY_BUCKETS = tuple((b, f"latency_in_{b}") for b in LATENCY_BUCKETS_MS)


def latency_counters(items: Sequence[Item], now: int) -> dict[str, int]:
    counters: dict[str, int] = {}
    names: dict[str, str] = {}  # event -> its counter's name, formatted once a round
    for it in items:
        received = it.entry.received_ms
        # issue 6: per-event outcome, read by /metrics as cartbridge_events_total{outcome}
        event = it.entry.event
        if not event:  # an entry queued before headers named their event
            call = orjson.loads(it.entry.call)
            event = call.get("event") or call.get("type")
        if type(event) is str:
            name = names.get(event)
            if name is None:
                name = names[event] = f"events:{event}:delivered"
        else:
            # An unnamed entry's call that says no text (null, a number, an object): formatted
            # as it always was, not remembered (True and 1 are one key; a dict is not a key).
            name = f"events:{event}:delivered"
        counters[name] = counters.get(name, 0) + 1
        if received:
            ms = max(0, now - received)
            counters["latency_ms_sum"] = counters.get("latency_ms_sum", 0) + ms
            counters["latency_count"] = counters.get("latency_count", 0) + 1
            # One counter for the bucket the latency falls in, not one for every bucket it is
            # under: /metrics adds them up into the cumulative histogram. Cumulative counters
            # cost nine HINCRBYs a delivery round, the most of any commit (issue 19).
            for b, bucket in _LATENCY_BUCKETS:
                if ms <= b:
                    counters[bucket] = counters.get(bucket, 0) + 1
                    break
    return counters


# --- the job ---------------------------------------------------------------------------------


class Gate:
    """Whether this deliverer may send: asked before every request (from the pool's threads).

    Open while the process is not stopping, the delivery lease is still this deliverer's in
    Redis, and no erasure waits for the lease (`Keys.erasing`). Read in Redis each time: the
    lease keeper notices a lost lease only at its next renewal, and an erasure must not wait
    for a whole drain budget of rounds. Once closed it stays closed; `erasing` tells that an
    erasure closed it (it wakes the shop's delivery once it is done).
    """

    def __init__(self, services: Services, shop: str, lease: Lease) -> None:
        self.services = services
        self.shop = shop
        self.lease = lease
        self.closed = False
        self.erasing = False

    def open(self, read: tuple[bytes | None, bytes | None] | None = None) -> bool:
        """`read`: the lease's and the erasure's tokens as just read by the caller (the
        delivery's first check rides in its start's MGET: `Store.delivery_start`)."""
        if self.closed:
            return False
        if self.services.stopping.is_set() or self.lease.lost.is_set():
            self.closed = True
            return False
        try:
            holder, erasing = read or self.services.store.delivery_gate(self.shop)
        except StoreError:
            # Cannot tell whether the lease is still ours: send nothing more (the round's settle
            # meets the same error, and the window stays in Redis).
            self.closed = True
            return False
        if erasing is not None:
            self.erasing = True
        if erasing is not None or holder != self.lease.token.encode():
            self.closed = True
        return not self.closed


def deliver(services: Services, shop: str) -> None:
    """Send the shop's outbox until it is empty, out of time, paused, stopping or an erasure of
    the shop waits for it.

    Raises redis errors (the window stays in Redis and is redone); never loses a call.
    """
    keys = Keys(shop)
    paused = False
    with Lease(services.store, keys.deliver_lease) as lease:
        if not lease.held:
            return  # another worker delivers this shop; its finish step sees anything new
        gate = Gate(services, shop, lease)
        paused_at, refused_key, holder, erasing = services.store.delivery_start(shop)
        first: tuple[bytes | None, bytes | None] | None = (holder, erasing)
        if paused_at is not None:
            if not _resume_if_possible(services, shop, paused_at, refused_key):
                return  # still paused: the ticker wakes us again for the next probe
            first = None  # a probe took time: the gate is read again
        s = services.settings
        deadline = time.monotonic() + s.drain_time_budget_s
        with ThreadPoolExecutor(s.deliver_concurrency, thread_name_prefix="deliver") as pool:
            while gate.open(first):
                first = None
                window, left = services.store.take_window(
                    shop, BATCH_BYTES * s.deliver_concurrency, MAX_CALLS_PER_BATCH
                )
                if window:
                    try:
                        paused = _round(services, shop, lease, gate, pool, window)
                    except LeaseLost:
                        log.warning(
                            "delivery lease lost; another worker goes on", extra={"shop": shop}
                        )
                        return
                    if paused:
                        break
                    if not left:
                        # The outbox was empty when this window was taken: on to the end's
                        # check (after the lease is let go, see FINISH) rather than a take that
                        # finds nothing. Light traffic delivers one webhook's calls a round;
                        # this saves 8 commands of the ~36 such a round costs.
                        break
                elif not left:
                    break
                if time.monotonic() > deadline:
                    break
        if paused or gate.erasing:
            return  # the ticker wakes a paused shop for its probe; an erasure wakes it when done
        # The lease is let go and the outbox checked in one script (the lease first, as before).
        more = lease.release_with(lambda token: services.store.finish_deliver(shop, token))
    if more:
        services.deliver_soon(shop)


def _item(raw: bytes, index: int) -> Item:
    """One call of the window, decoded (`OutboxEntry.decode`, `OutboxEntry.hold_name`, in
    line: it runs for every call delivered)."""
    h, call = wire.decode_outbox_entry(raw)
    entry = OutboxEntry(
        call, h.received_ms, h.person, h.guards, h.kind, h.event, h.person_hash, h.topic
    )
    return Item(raw, entry, index, wire.hold_name(h.person_hash, h.person))


def _round(
    services: Services,
    shop: str,
    lease: Lease,
    gate: Gate,
    pool: ThreadPoolExecutor,
    window: list[bytes],
) -> bool:
    """Send one window in phases and settle it; returns True when the shop got paused."""
    items = [_item(raw, i) for i, raw in enumerate(window)]
    settle: Settlement[deadletters.DeadLetter] = Settlement(
        ledger_keep=services.settings.ops_ledger_calls
    )
    items = _drop_guarded(services, shop, items, settle)
    queues = segments_by_person(items)
    states = {
        h: RetryState.decode(v) for h, v in services.store.retry_state(shop, list(queues)).items()
    }

    def stopping() -> bool:
        return not gate.open()

    delivered: list[Item] = []
    dead: list[tuple[Item, pipelines.PipelinesError]] = []
    waiting: dict[str, pipelines.RetryableError] = {}
    not_done: list[Item] = []  # failed or not tried, back to a hold list or the window
    auth: pipelines.ConfigurationError | None = None
    # Each request asks the gate in Redis before it goes (send_request); the loop only looks
    # at what those asks found, so a round costs one read of the gate per request.
    while auth is None and not gate.closed:
        heads = [q.popleft() for h, q in queues.items() if q and h not in waiting]
        if not heads:
            break
        for sent in pool.map(
            lambda job: send_request(services.sink_for(shop), job, stopping), pack(heads)
        ):
            delivered += sent.delivered
            dead += sent.dead
            not_done += sent.waiting + sent.unsent
            settle.count("deliver:requests", sent.requests)
            if sent.retry is not None:
                settle.count("deliver:retries")
                _log_retry(shop, sent)
                for it in sent.waiting:
                    waiting.setdefault(it.person, sent.retry)
            auth = auth or sent.auth
    for q in queues.values():
        for seg in q:
            not_done += seg.items

    now = now_ms()
    for it in delivered:
        _ledger(settle, it, now, ops_records.DELIVERED)
    for it, err in dead:
        _ledger(settle, it, now, ops_records.DEAD, _reason(err))
        settle.letters.append(
            deadletters.call_letter(
                shop,
                it.raw,
                _reason(err),
                status=err.status,
                response=err.body,
                first_error_ms=now,
                last_error_ms=now,
            )
        )
    _hold(services, shop, settle, waiting, not_done, states, now)
    # Not tried (paused, stopping) and nobody waits for them: they stay in the window.
    settle.remaining = [
        it.raw for it in sorted(not_done, key=lambda i: i.index) if it.person not in waiting
    ]
    settle.clear |= {h for h in states if h not in waiting}
    settle.count("calls:delivered", len(delivered))
    if delivered:
        settle.marks["delivered"] = now
    settle.counters.update(
        {k: settle.counters.get(k, 0) + v for k, v in latency_counters(delivered, now).items()}
    )
    settle.count("calls:dead_lettered", len(settle.letters))
    services.store.settle_outbox(shop, lease.token, settle)
    if delivered:  # a round that delivered nothing (paused, retrying) has its own lines
        log.info(  # issue 6: one line per delivery batch
            "batch delivered",
            extra={
                "shop": shop,
                "batch_id": uuid.uuid4().hex[:16],
                "calls": len(window),
                "delivered": len(delivered),
                "dead_lettered": len(settle.letters),
            },
        )
    for letter in settle.letters:
        deadletters.log_dead_letter(letter)
    if auth is not None:
        _pause(services, shop, auth)
        return True
    return False


_CONVERTED_SINCE = "its cart or checkout was converted to an order after it was queued"


def _ledger(
    settle: Settlement[deadletters.DeadLetter], it: Item, now: int, outcome: str, why: str = ""
) -> None:
    """Note what became of one call in its person's ledger (the ops console's), settled with
    the round."""
    if not it.entry.person or not settle.ledger_keep:
        return
    event = it.entry.event or deadletters.call_name(it.entry.call)[0]
    if event == USER_DELETED:
        return  # sent for a person just erased: no ledger of theirs comes back
    mid = ops_records.message_id_of(it.entry.call)
    # Pipelines' messages may quote the call's values: the ledger keeps no personal data.
    settle.ledger.append(
        (
            it.person,
            ops_records.ledger_entry(
                now,
                event,
                outcome,
                message_id=mid,
                reason=redact(why) if why else "",  # a delivered call has no reason to redact
                topic=it.entry.topic,
            ),
        )
    )


def _reason(err: pipelines.PipelinesError) -> str:
    if isinstance(err, pipelines.BadRequestError):
        first = err.errors[0] if err.errors else ""
        return f"rejected by Pipelines (400): {first}"[:300]
    if isinstance(err, pipelines.PayloadTooLargeError):
        return "too large for Pipelines (413 or over 32 KB)"
    return f"not accepted by Pipelines ({err.status or type(err).__name__})"


def _hold(
    services: Services,
    shop: str,
    settle: Settlement[deadletters.DeadLetter],
    waiting: dict[str, pipelines.RetryableError],
    not_done: list[Item],
    states: dict[str, RetryState],
    now: int,
) -> None:
    """Each waiting person's calls go to their hold list (in order) until a due time, or to the
    dead letters once the retry horizon has passed since their first failure."""
    s = services.settings
    by_person: dict[str, list[Item]] = {}
    for it in sorted(not_done, key=lambda i: i.index):
        if it.person in waiting:
            by_person.setdefault(it.person, []).append(it)
    delays: dict[int, float] = {}
    for h, its in by_person.items():
        err = waiting[h]
        state = states.get(h) or RetryState()
        state = RetryState(state.attempts + 1, state.first_ms or now)
        if now - state.first_ms > s.retry_horizon_s * 1000:
            for it in its:
                _ledger(settle, it, now, ops_records.DEAD, "retry horizon passed")
                settle.letters.append(
                    deadletters.call_letter(
                        shop,
                        it.raw,
                        "retry horizon passed",
                        status=err.status,
                        response=err.body,
                        attempts=state.attempts,
                        first_error_ms=state.first_ms,
                        last_error_ms=now,
                    )
                )
            states.pop(h, None)
            settle.clear.add(h)
            continue
        # People who failed in the same request retry together (one jittered delay per error).
        delay = delays.setdefault(
            id(err),
            pipelines.retry_delay_s(
                err, state.attempts - 1, base_s=s.retry_base_s, cap_s=s.retry_cap_s
            ),
        )
        # Full jitter can draw ~0: a floor keeps a failing person from being retried in the same
        # breath (and the window loop from spinning on them).
        due = now + max(MIN_RETRY_DELAY_MS, int(delay * 1000))
        why = (
            f"attempt {state.attempts} failed ({err.status or 'network'}); retry in {due - now} ms"
        )
        for it in its:
            _ledger(settle, it, now, ops_records.HELD, why)
        settle.held.append((h, [it.raw for it in its], due, state.encode(now, err.status)))
        settle.count("deliver:held", len(its))


def _log_retry(shop: str, sent: Sent) -> None:
    err = sent.retry
    assert err is not None
    log.warning(
        "delivery attempt failed, will retry",
        extra={
            "shop": shop,
            "status": err.status,
            "error": str(err),
            "calls": len(sent.waiting),
            "message_ids": [deadletters.call_name(i.entry.call)[1] for i in sent.waiting[:5]],
        },
    )


def _drop_guarded(
    services: Services, shop: str, items: list[Item], settle: Settlement[deadletters.DeadLetter]
) -> list[Item]:
    """Re-check, just before the POST, whether a queued call has been overtaken (a converted
    cart): such calls are counted as suppressed, settled, and not sent."""
    guards = sorted({g for it in items for g in it.entry.guards})
    if not guards:
        return items
    keys = Keys(shop)
    values = services.store.load_state([keys.state(g) for g in guards])
    hit = {g for g in guards if values[keys.state(g)]}
    if not hit:
        return items
    kept: list[Item] = []
    for it in items:
        if hit.intersection(it.entry.guards):
            name = deadletters.call_name(it.entry.call)[0] or "call"
            settle.count(f"events:{name}:suppressed")
            _ledger(settle, it, now_ms(), ops_records.SUPPRESSED, _CONVERTED_SINCE)
        else:
            kept.append(it)
    return kept


# --- pause on a refused write key ------------------------------------------------------------


def _pause(services: Services, shop: str, err: pipelines.ConfigurationError) -> None:
    s = services.settings
    first = services.store.pause(
        shop, key_fingerprint=key_fingerprint(services, shop), probe_ms=int(s.pause_probe_s * 1000)
    )
    if first:
        services.store.count(shop, "delivery:paused")
        if isinstance(err, pipelines.EndpointError):
            config = services.store_config(shop)
            setting = (
                "PIPELINES_URL"
                if config is None or config.is_default
                else "this shop's pipelines_url in BRIDGE_STORES_FILE"
            )
            log.error(
                f"PIPELINES_URL IS WRONG: {pipelines_url(services, shop)} is {err}; delivery for "
                f"this shop is paused, calls are kept; set {setting} to the API base ending in "
                "/v1, "
                f"like {US_PIPELINES_URL} (delivery resumes by itself)",
                extra={"shop": shop, "status": err.status},
            )
            return
        log.error(
            "PIPELINES REFUSED THE WRITE KEY: delivery for this shop is paused, calls are kept; "
            "fix PIPELINES_WRITE_KEY (delivery resumes by itself)",
            extra={"shop": shop, "status": err.status},
        )


def _resume_if_possible(
    services: Services, shop: str, paused_at: bytes, refused_key: bytes | None
) -> bool:
    """True when the paused shop is not paused any more: the key changed, or a probe went
    through (`paused_at`, `refused_key`: the pause as read, `Store.paused`)."""
    s = services.settings
    if refused_key is not None and refused_key.decode() == key_fingerprint(services, shop):
        # Same key as was refused: probe, at most once per pause_probe_s.
        if not services.store.claim_probe(shop, int(s.pause_probe_s * 1000)):
            return False
        try:
            services.sink_for(shop).probe()
        except pipelines.PipelinesError:
            return False
    services.store.resume(shop)
    services.store.count(shop, "delivery:resumed")
    log.warning(
        "Pipelines accepts the write key and URL again: delivery resumed",
        extra={"shop": shop, "paused_ms": now_ms() - int(paused_at)},
    )
    return True
