"""Reconciliation: find orders changed in a window that the bridge never saw, and feed them in.

Shopify does not guarantee webhook delivery and tells apps to reconcile. `reconcile` lists the
orders updated in `[now - window, now - grace]` through the Admin API; an order is "seen" when
the drain keeps a state record for it (`order:<id>`). Every unseen order is queued as the
webhook it should have been (`orders/paid` when paid, else `orders/create`) with webhook id
`reconcile:<order id>:<updated_at>`, so it takes the normal live path: same mapping, same
dedupe, same messageIds as the lost webhook would have produced.

The grace period keeps a webhook that is still in the inbound queue (not yet drained, so with
no state record) from being counted as missing. Subscription contracts updated in the window
are reconciled too (backfill/contracts.py): all of them, since a seen contract can still have
missed a change. Abandoned checkouts are not reconciled: the
Admin API's `AbandonedCheckout` carries no cart or checkout token to join the live records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from rq import Queue

from bridge.backfill.admin import AdminClient
from bridge.backfill.contracts import ContractReport, reconcile_contracts
from bridge.ids import iso_z
from bridge.sources.shopify.graphql import rest_order
from bridge.store.facade import INGEST_DUPLICATE, INGEST_QUEUED_WAKE, Store, now_ms
from bridge.store.keys import RECONCILE_LOCK_KEY
from bridge.store.wire import Envelope

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)

PAID_STATUSES = frozenset({"paid", "partially_refunded", "refunded", "partially_paid"})
RECONCILE_LOCK = RECONCILE_LOCK_KEY


@dataclass
class ReconcileReport:
    shop: str
    since: datetime
    until: datetime
    listed: int = 0
    missing: int = 0
    queued: int = 0
    duplicates: int = 0
    missing_ids: list[str] = field(default_factory=list)
    contracts: ContractReport | None = None

    def line(self) -> str:
        return (
            f"{self.shop}: {self.listed} orders updated {iso_z(self.since)}..{iso_z(self.until)}, "
            f"{self.missing} never seen by the bridge (webhooks missing), {self.queued} queued"
        )


def topic_for(order: dict[str, Any]) -> str:
    """The webhook a missed order stands for: `orders/paid` once paid, else `orders/create`."""
    paid = (order.get("financial_status") or "") in PAID_STATUSES
    return "orders/paid" if paid else "orders/create"


def window_search(since: datetime, until: datetime) -> str:
    """Admin API search syntax for orders updated in [since, until]."""
    return f"updated_at:>='{iso_z(since)}' AND updated_at:<='{iso_z(until)}'"


def unseen(store: Store, shop: str, order_ids: list[str]) -> list[str]:
    """The ids among `order_ids` with no `order:<id>` state record (one round trip)."""
    missing = set(store.missing_states(shop, [f"order:{oid}" for oid in order_ids]))
    return [oid for oid in order_ids if f"order:{oid}" in missing]


def reconcile(
    admin: AdminClient,
    store: Store,
    queue: Queue | None,
    *,
    shop: str,
    window: timedelta,
    grace: timedelta = timedelta(minutes=5),
    now: datetime | None = None,
    enqueue_drain: Callable[[Queue, str], None] | None = None,
    dry_run: bool = False,
    contracts: bool = True,
) -> ReconcileReport:
    """Queue the window's orders that have no state record, then (with `contracts`) the
    window's subscription contracts (backfill/contracts.py). Raises AdminError, redis errors."""
    now = now or datetime.now(UTC)
    until = now - grace
    report = ReconcileReport(shop=shop, since=now - window, until=until)
    search = window_search(report.since, until)
    for page in admin.order_pages(search=search, sort_key="UPDATED_AT"):
        orders = [rest_order(node) for node in page.nodes]
        orders = [o for o in orders if o.get("id")]
        report.listed += len(orders)
        missing = set(unseen(store, shop, [str(o["id"]) for o in orders]))
        for order in orders:
            oid = str(order["id"])
            if oid not in missing:
                continue
            report.missing += 1
            report.missing_ids.append(oid)
            if dry_run:
                continue
            order.pop("refunds", None)  # refunds arrive through their own webhook topic
            env = Envelope(
                shop=shop,
                topic=topic_for(order),
                webhook_id=f"reconcile:{oid}:{order.get('updated_at') or ''}",
                body=orjson.dumps(order),
                received_ms=now_ms(),
            )
            result = store.ingest(env)
            if result == INGEST_DUPLICATE:
                report.duplicates += 1
                continue
            report.queued += 1
            if result == INGEST_QUEUED_WAKE and enqueue_drain is not None and queue is not None:
                enqueue_drain(queue, shop)
    if contracts:
        report.contracts = reconcile_contracts(
            admin,
            store,
            queue,
            shop=shop,
            since=report.since,
            until=until,
            enqueue_drain=enqueue_drain,
            dry_run=dry_run,
        )
    note_api_version(admin, store, shop)
    if report.missing or report.listed:
        store.count(shop, "reconcile:listed", report.listed)
        store.count(shop, "reconcile:missing", report.missing)
    log.info(
        "reconciled",
        extra={"shop": shop, "listed": report.listed, "missing": report.missing},
    )
    return report


def note_api_version(admin: AdminClient, store: Store, shop: str) -> None:
    """Count the version Shopify answered with (`cartbridge_admin_api_version_total` with
    outcome `match`, or `mismatch` when it fell forward from the one asked for)."""
    answered = admin.answered_version
    if answered:
        outcome = "match" if answered == admin.api_version else "mismatch"
        store.count(shop, f"admin_api_version:{answered}:{outcome}")


def maybe_reconcile(services: Services) -> ReconcileReport | None:
    """From the worker's sweep: reconcile once per RECONCILE_EVERY_S across all workers.

    Does nothing when the interval is 0 or the Admin API is not configured; a failure is
    logged (the sweep must keep running) and retried at the next interval.
    """
    from bridge.backfill.admin import AdminError
    from bridge.worker.queues import enqueue_drain

    s = services.settings
    if not s.reconcile_every_s or not s.shopify_shop:
        return None
    if not s.shopify_admin_token.get_secret_value():
        return None
    if not services.store.claim(RECONCILE_LOCK, s.reconcile_every_s):
        return None
    admin = AdminClient.from_settings(s, timeout_s=s.http_timeout_s)
    try:
        report = reconcile(
            admin,
            services.store,
            services.queue,
            shop=s.shopify_shop.strip().lower(),
            window=timedelta(seconds=s.reconcile_window_s),
            grace=timedelta(seconds=s.reconcile_grace_s),
            enqueue_drain=enqueue_drain,
        )
    except AdminError as exc:
        log.error("reconcile failed", extra={"error": str(exc)})
        return None
    finally:
        admin.close()
    if report.missing:
        log.warning("webhooks missing", extra={"shop": report.shop, "missing": report.missing})
    return report
