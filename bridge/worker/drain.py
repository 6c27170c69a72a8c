"""The drain loop: take queued webhooks in batches, process, commit, hand the outbox to delivery.

One drain runs per shop at a time (a lease), so the shop's state has one writer; it re-enqueues
itself when its time budget ends with work left, so other shops get workers too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from bridge.compliance.erasure import run_pending
from bridge.compliance.requests import COMPLIANCE_TOPICS
from bridge.delivery.deadletters import log_dead_letter, webhook_letter
from bridge.store import StoreError
from bridge.store.facade import Begun, Commit, Keys
from bridge.store.lease import Lease
from bridge.store.wire import Envelope, envelope_topic
from bridge.worker.processor import ProcessConfig, process
from bridge.worker.queues import enqueue_drain, jobs_waiting

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)


def process_config(services: Services, shop: str) -> ProcessConfig:
    """The shop's processing rules, built once per process (`Services.shop`)."""
    return services.shop(shop).rules


class _Committing:
    """A batch's commit, sent but not yet confirmed, and what follows its confirmation."""

    def __init__(self, services: Services, shop: str, commit: Commit, webhooks: int) -> None:
        self.services, self.shop, self.commit, self.webhooks = services, shop, commit, webhooks
        self.pending = services.store.send_commit(shop, commit, webhooks)

    def confirm(self) -> None:
        """Wait for the commit (raises a Redis error), then run what it committed."""
        services, shop, commit = self.services, self.shop, self.commit
        woke = self.pending.result()
        services.store.flush_counters()  # once a second at most (store/tally.py)
        _warn_version_mismatch(shop, commit, services.settings.shopify_api_version)
        if commit.compliance:
            run_pending(services, shop)
        log.info(
            "batch processed",
            extra={"shop": shop, "webhooks": self.webhooks, "calls": len(commit.calls)},
        )
        if woke:  # the commit set the delivery flag: no delivery was pending
            services.deliver_soon(shop)


# Drains that retry a whole work list left unfinished (a crash, the job's timeout) before it is
# split: a passing fault (a worker killed by a deploy) is retried whole; a poison batch is then
# halved on each further try until its culprit fails alone and is parked.
TRIES_BEFORE_SPLIT = 3


_warned_versions: set[tuple[str, str]] = set()


def _warn_version_mismatch(shop: str, commit: Commit, configured: str) -> None:
    """One warning per process for each version a shop's webhooks carry other than the
    configured one (all are counted: `cartbridge_webhook_api_version_total`)."""
    for name in commit.counters:
        if name.startswith("webhook_api_version:") and name.endswith(":mismatch"):
            carried = name.split(":")[1]
            if (shop, carried) not in _warned_versions:
                _warned_versions.add((shop, carried))
                log.warning(
                    "webhooks carry API version %s, not SHOPIFY_API_VERSION %s: check the app's "
                    "webhook api_version (Shopify serves its oldest supported version in place "
                    "of one past its 12-month window)",
                    carried,
                    configured,
                    extra={"shop": shop},
                )


def drain(services: Services, shop: str) -> None:
    """Process the shop's inbound queue until empty or out of time. Raises redis errors.

    Batches are pipelined: while batch N is mapped, Redis runs batch N-1's commit and moves
    batch N+1 behind N in the work list. Batch N's state is loaded only once N-1's commit is
    confirmed, so each batch still reads everything the one before it wrote; a commit removes
    only its own batch from the work list, so a crash anywhere leaves every webhook queued.
    A batch carrying a compliance request is committed and carried out before anything after
    it is read.

    One webhook that fails is parked by `process`; a batch that fails as a whole (an error
    outside any one webhook, a crash, the job's timeout) stays in the work list and is tried
    again by the next drain, whole `TRIES_BEFORE_SPLIT` times, then in ever smaller batches
    (`_split`): no webhook blocks its shop for more than a bounded number of tries.
    """
    keys = Keys(shop)
    config = process_config(services, shop)
    size = services.settings.drain_batch_size
    deadline = time.monotonic() + services.settings.drain_time_budget_s
    more = False
    # A short lease kept alive by a thread: a SIGKILLed worker's shop is free again within
    # seconds, not after a long fixed lease.
    with Lease(services.store, keys.drain_lease) as lease:
        if not lease.held:
            return  # another worker drains this shop; its finish step sees anything new
        try:
            run_pending(
                services, shop
            )  # compliance requests a crashed drain committed but did not run
            begun = services.store.begin_drain(shop, size)
            batch = [*begun.resumed, *begun.moved]
            retried = begun.tries > 0
            if begun.tries > TRIES_BEFORE_SPLIT:
                log.warning(
                    "a batch failed %d times; trying it in smaller batches",
                    begun.tries - 1,
                    extra={"shop": shop, "webhooks": len(begun.resumed)},
                )
                _split(services, shop, config, begun, lease)
                batch, retried = services.store.take_inbound(shop, size), False
            previous: list[_Committing] = []  # at most one: the last batch's, unconfirmed

            def confirm_previous() -> None:
                while previous:
                    previous.pop().confirm()

            def load(names: list[str]) -> Mapping[str, bytes | None]:
                confirm_previous()  # this batch reads what the last one wrote
                return services.store.load_state(names)

            # The batch was gathered after the queue ran empty (and is not full): the next is
            # waited for, not taken ahead, since a take now would find nothing.
            gathered = False
            # The webhooks the last batch processed: two identical copies of one (the web's
            # write sent again) can fall on either side of a batch boundary (processor.py).
            processed: set[str] = set()
            while batch and not lease.lost.is_set():
                last = time.monotonic() > deadline or services.stopping.is_set()
                full = len(batch) >= size  # a backlog: the next take finds a full batch too
                upcoming = (
                    None if last or gathered else services.store.send_take(shop, size, backlog=full)
                )
                commit = process(
                    shop,
                    batch,
                    source=services.source,
                    config=config,
                    load=load,
                    key_of=keys.state,
                    mark_claimed=retried,
                    processed=processed,
                )
                processed = commit.processed
                commit.retried, retried = retried, False
                confirm_previous()
                committing = _Committing(services, shop, commit, len(batch))
                if commit.compliance:
                    # An erasure must also reach webhooks queued after the request: the batch
                    # moved meanwhile is read again once the erasure has gone through the work
                    # list (the moves themselves stand: every webhook stays queued).
                    committing.confirm()
                    if upcoming is not None:
                        upcoming.result()
                    batch = [] if last else services.store.take_inbound(shop, size)
                    gathered = False
                    continue
                previous.append(committing)
                batch = upcoming.result() if upcoming is not None else []
                gathered = False
                if not batch and not last:
                    confirm_previous()  # delivery starts before the drain waits
                    batch = _linger(services, shop, lease, deadline)
                    if batch and gathers_behind(batch[0]):
                        batch += _gather(services, shop, lease, deadline, size - len(batch))
                        gathered = len(batch) < size
            confirm_previous()
        except StoreError:
            raise
        except Exception:
            # Not one webhook's fault (those are parked): the batch stays in the work list and
            # the next drain, enqueued below, tries it again, then splits it.
            log.exception("drain failed; its batch is tried again", extra={"shop": shop})
            services.store.count(shop, "drain:failed")
        finally:
            try:
                services.store.flush_counters(force=True)
            finally:
                more = services.store.finish_drain(shop)
    if more:
        enqueue_drain(services.queue, shop)


# A lingering drain waits in slices of this long, looking for other jobs between them: a job
# queued for another shop waits at most one slice behind this drain (each slice is one BLMOVE
# and one LLEN).
LINGER_SLICE_S = 0.05


def _linger(services: Services, shop: str, lease: Lease, deadline: float) -> list[bytes]:
    """The next webhook if one comes within `DRAIN_LINGER_MS`, else nothing (the drain ends).

    Under light traffic each webhook would otherwise be a drain job of its own: RQ's job
    bookkeeping is ~75 Redis commands a job, more than the webhook's own work (BENCHMARKS.md,
    Redis cost). While the drain waits its flag stays set, so the web queues no job for the
    shop. It stops waiting as soon as any job is queued (another shop's drain must not wait
    behind this one), at its time budget, and once the worker is stopping or the lease is lost.
    The webhook is moved into the work list like any other take, so a crash leaves it queued.
    """
    until = min(time.monotonic() + services.settings.drain_linger_ms / 1000, deadline)
    while True:
        wait_s = min(LINGER_SLICE_S, until - time.monotonic())
        if wait_s < 0.01 or services.stopping.is_set() or lease.lost.is_set():
            return []
        if jobs_waiting(services.queue):
            return []
        moved = services.store.wait_inbound(shop, wait_s)
        if moved is not None:
            return [moved]


# A gathering drain looks for other jobs this often: another shop's job waits at most this long
# behind it (one LLEN each; the gathering shop's own webhooks wait up to DRAIN_GATHER_MS anyway).
GATHER_SLICE_S = 0.1


def gathers_behind(raw: bytes) -> bool:
    """Whether more webhooks may gather behind this one in its batch: not behind a compliance
    request, since what comes after it must be read once the erasure went through (as the
    batch taken ahead is, in `drain`)."""
    return envelope_topic(raw) not in COMPLIANCE_TOPICS


def _gather(services: Services, shop: str, lease: Lease, deadline: float, room: int) -> list[bytes]:
    """Up to `room` more webhooks, taken once `DRAIN_GATHER_MS` has passed since the one the
    linger brought: a run of webhooks that trickle in is processed as one batch and delivered in
    one round, as the official client sends what arrived over its upload interval.

    The wait is a sleep in slices, each followed by one LLEN of the job queue: the webhooks stay
    in the inbound queue meanwhile (queued, so a crash loses none), and the waiting ends early
    when another shop's job is queued, the worker is stopping, the lease is lost or the time
    budget ends (what gathered until then is taken all the same, except by a stopping worker or
    a lost lease: those leave it queued for the next drain)."""
    gather_s = services.settings.drain_gather_ms / 1000
    if gather_s <= 0 or room <= 0:
        return []
    until = min(time.monotonic() + gather_s, deadline)
    while (wait_s := min(GATHER_SLICE_S, until - time.monotonic())) > 0:
        if services.stopping.wait(wait_s) or lease.lost.is_set() or jobs_waiting(services.queue):
            break
    if services.stopping.is_set() or lease.lost.is_set():
        return []
    return services.store.send_take(shop, room).result()


def _split(
    services: Services, shop: str, config: ProcessConfig, begun: Begun, lease: Lease
) -> None:
    """Process a work list that failed `begun.tries` times in batches of half the size tried
    last, each committed on its own, so the next failure is narrowed down to half as many
    webhooks; a webhook that failed alone is parked with the reason. Raises as `process` and
    Redis do (the next drain halves again)."""
    keys = Keys(shop)
    work = [*begun.resumed, *begun.moved]
    if begun.size == 1:
        commit = Commit(seen_ttl_s=config.dedupe_ttl_s, retried=True)
        park_alone(commit, work[0], begun.tries - 1)
        _Committing(services, shop, commit, 1).confirm()
        return  # the rest of the work list is drained as usual
    size = max(1, -(-(begun.size or len(begun.resumed)) // 2))
    services.store.set_try_size(shop, size)
    for start in range(0, len(work), size):
        if lease.lost.is_set():
            return
        chunk = work[start : start + size]
        commit = process(
            shop,
            chunk,
            source=services.source,
            config=config,
            load=services.store.load_state,
            key_of=keys.state,
            mark_claimed=True,
        )
        commit.retried = start + size >= len(work)  # the whole list went through
        _Committing(services, shop, commit, len(chunk)).confirm()


def park_alone(commit: Commit, raw: bytes, tries: int) -> None:
    """Park a webhook whose batch failed `tries` times, the last ones with it alone."""
    reason = f"processing failed {tries} times (a crash or the job's timeout); parked alone"
    try:
        env = Envelope.decode(raw)
    except Exception:
        letter = webhook_letter("", raw, "unknown", "", reason)
        commit.letters.append(letter)
        commit.count("webhooks:unknown:parked")
        return
    letter = webhook_letter(env.shop, raw, env.topic, env.webhook_id, reason)
    log_dead_letter(letter)
    commit.letters.append(letter)
    commit.seen.append(Keys(env.shop).seen(env.webhook_id))
    commit.count(f"webhooks:{env.topic}:parked")
