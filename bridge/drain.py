"""The drain loop: take queued webhooks in batches, process, commit, hand the outbox to delivery.

One drain runs per shop at a time (a lease), so the shop's state has one writer; it re-enqueues
itself when its time budget ends with work left, so other shops get workers too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from bridge.compliance import run_pending
from bridge.lease import Lease
from bridge.processor import ProcessConfig, process
from bridge.store import Commit, Keys
from jobs.enqueue import enqueue_drain

if TYPE_CHECKING:
    from bridge.runtime import Runtime

log = logging.getLogger(__name__)


def process_config(rt: Runtime, shop: str) -> ProcessConfig:
    s = rt.settings
    store = rt.store_config(shop)
    return ProcessConfig(
        shop_currency=store.currency if store is not None else s.shop_currency,
        skip_test_orders=s.skip_test_orders,
        naming=s.event_naming,
        order_completed_on=s.order_completed_on,
        checkout_contact_wait_s=s.checkout_contact_wait_s,
        refund_order_wait_s=s.refund_order_wait_s,
        unjoined_order_window_s=s.unjoined_order_window_s,
        identity_hint_customer_attr=s.identity_hint_customer_attr,
        identity_hint_anonymous_attr=s.identity_hint_anonymous_attr,
        dedupe_ttl_s=s.webhook_dedupe_ttl_s,
    )


class _Committing:
    """A batch's commit, sent but not yet confirmed, and what follows its confirmation."""

    def __init__(self, rt: Runtime, shop: str, commit: Commit, webhooks: int) -> None:
        self.rt, self.shop, self.commit, self.webhooks = rt, shop, commit, webhooks
        self.pending = rt.store.send_commit(shop, commit, webhooks)

    def confirm(self) -> None:
        """Wait for the commit (raises a Redis error), then run what it committed."""
        rt, shop, commit = self.rt, self.shop, self.commit
        woke = self.pending.result()
        if commit.compliance:
            run_pending(rt, shop)
        log.info(
            "batch processed",
            extra={"shop": shop, "webhooks": self.webhooks, "calls": len(commit.calls)},
        )
        if woke:  # the commit set the delivery flag: no delivery was pending
            rt.deliver_soon(shop)


def drain(rt: Runtime, shop: str) -> None:
    """Process the shop's inbound queue until empty or out of time. Raises redis errors.

    Batches are pipelined: while batch N is mapped, Redis runs batch N-1's commit and moves
    batch N+1 behind N in the work list. Batch N's state is loaded only once N-1's commit is
    confirmed, so each batch still reads everything the one before it wrote; a commit removes
    only its own batch from the work list, so a crash anywhere leaves every webhook queued.
    A batch carrying a compliance request is committed and carried out before anything after
    it is read.
    """
    keys = Keys(shop)
    config = process_config(rt, shop)
    size = rt.settings.drain_batch_size
    deadline = time.monotonic() + rt.settings.drain_time_budget_s
    more = False
    # A short lease kept alive by a thread: a SIGKILLed worker's shop is free again within
    # seconds, not after a long fixed lease.
    with Lease(rt.store, keys.drain_lease) as lease:
        if not lease.held:
            return  # another worker drains this shop; its finish step sees anything new
        try:
            run_pending(rt, shop)  # compliance requests a crashed drain committed but did not run
            batch = rt.store.take_inbound(shop, size)
            previous: list[_Committing] = []  # at most one: the last batch's, unconfirmed

            def confirm_previous() -> None:
                while previous:
                    previous.pop().confirm()

            def load(names: list[str]) -> Mapping[str, bytes | None]:
                confirm_previous()  # this batch reads what the last one wrote
                return rt.store.load_state(names)

            while batch and not lease.lost.is_set():
                last = time.monotonic() > deadline or rt.stopping.is_set()
                upcoming = None if last else rt.store.send_take(shop, size)
                commit = process(
                    shop, batch, source=rt.source, config=config, load=load, key_of=keys.state
                )
                confirm_previous()
                committing = _Committing(rt, shop, commit, len(batch))
                if commit.compliance:
                    # An erasure must also reach webhooks queued after the request: the batch
                    # moved meanwhile is read again once the erasure has gone through the work
                    # list (the moves themselves stand: every webhook stays queued).
                    committing.confirm()
                    if upcoming is not None:
                        upcoming.result()
                        batch = rt.store.take_inbound(shop, size)
                    else:
                        batch = []
                    continue
                previous.append(committing)
                batch = upcoming.result() if upcoming is not None else []
            confirm_previous()
        finally:
            more = rt.store.finish_drain(shop)
    if more:
        enqueue_drain(rt.queue, shop)
