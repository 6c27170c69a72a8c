"""The drain loop: take queued webhooks in batches, process, commit, hand the outbox to delivery.

One drain runs per shop at a time (a lease), so the shop's state has one writer; it re-enqueues
itself when its time budget ends with work left, so other shops get workers too.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from bridge.compliance import run_pending
from bridge.lease import Lease
from bridge.processor import ProcessConfig, process
from bridge.store import Keys
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


def drain(rt: Runtime, shop: str) -> None:
    """Process the shop's inbound queue until empty or out of time. Raises redis errors."""
    keys = Keys(shop)
    config = process_config(rt, shop)
    deadline = time.monotonic() + rt.settings.drain_time_budget_s
    more = False
    # A short lease kept alive by a thread: a SIGKILLed worker's shop is free again within
    # seconds, not after a long fixed lease.
    with Lease(rt.store, keys.drain_lease) as lease:
        if not lease.held:
            return  # another worker drains this shop; its finish step sees anything new
        try:
            run_pending(rt, shop)  # compliance requests a crashed drain committed but did not run
            while not lease.lost.is_set():
                raw = rt.store.take_inbound(shop, rt.settings.drain_batch_size)
                if not raw:
                    break
                commit = process(
                    shop,
                    raw,
                    source=rt.source,
                    config=config,
                    load=rt.store.load_state,
                    key_of=keys.state,
                )
                rt.store.commit_drain(shop, commit)
                if commit.compliance:
                    run_pending(rt, shop)
                log.info(
                    "batch processed",
                    extra={"shop": shop, "webhooks": len(raw), "calls": len(commit.calls)},
                )
                if commit.calls and rt.store.wake(keys.deliver_flag):
                    rt.deliver_soon(shop)
                if time.monotonic() > deadline or rt.stopping.is_set():
                    break
        finally:
            more = rt.store.finish_drain(shop)
    if more:
        enqueue_drain(rt.queue, shop)
