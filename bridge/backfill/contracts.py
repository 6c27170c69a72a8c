"""Shopify subscription contracts from the Admin API into the drain: backfill pages, the
reconciliation window, and single lookups for billing attempts whose contract never came.

Every contract read becomes the webhook-shaped body of sources/shopify/graphql.py, queued as an
Envelope like any webhook, so the drain stays the one writer of subscription state:
- the backfill queues `backfill/subscription_contract` (state and traits, never a lifecycle
  event: history says what a contract is, not what just happened);
- reconciliation and the sweep's lookups queue `subscription_contracts/update`, the webhook that
  went missing: a lost cancel still sends `subscription_canceled` once the decide step sees the
  new status, and a contract looked up for a waiting billing attempt tells what is news about it.

Webhook ids are deterministic (`<origin>:subscription_contract:<id>:<revision>`), so a re-run
inside the dedupe window queues nothing twice, and an older snapshot never overwrites a newer
state (the decide step orders snapshots by revision, then `updated_at`).

Shopify shows an app only the contracts it created (`read_own_subscription_contracts`): a
bridge that is not the store's subscription app reads none, or is refused the scope.
Recharge has no backfill: the bridge holds no Recharge API token, only the webhook secret.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from rq import Queue

from bridge.backfill.admin import AdminAccessDenied, AdminClient
from bridge.canonical import subscription_ref
from bridge.identity.subscriptions import record_name
from bridge.ids import iso_z
from bridge.sources.shopify.graphql import webhook_contract
from bridge.sources.shopify.subscriptions import BACKFILL_CONTRACT_TOPIC
from bridge.store.facade import INGEST_DUPLICATE, INGEST_QUEUED_WAKE, Store, now_ms
from bridge.store.wire import Envelope

log = logging.getLogger(__name__)

CONTRACTS_SCOPE = "read_own_subscription_contracts"
CONTRACT_GID = "gid://shopify/SubscriptionContract/"
UPDATE_TOPIC = "subscription_contracts/update"


def contract_envelope(
    shop: str, body: dict[str, Any], *, origin: str, topic: str = BACKFILL_CONTRACT_TOPIC
) -> Envelope:
    """A contract body as a queued webhook; its id names the contract's revision (else its
    `updated_at`), so the same snapshot is queued once whoever reads it again."""
    version = body.get("revision_id") or body.get("updated_at") or ""
    return Envelope(
        shop=shop,
        topic=topic,
        webhook_id=f"{origin}:subscription_contract:{body.get('id')}:{version}",
        body=orjson.dumps(body),
        received_ms=now_ms(),
    )


def fetch_contract(client: AdminClient, contract_id: str) -> dict[str, Any] | None:
    """One contract, webhook-shaped (as a `backfill/subscription_contract` body), or None when
    Shopify shows this app no contract by that id. Raises AdminError (AdminAccessDenied
    without `read_own_subscription_contracts`)."""
    node = client.contract(CONTRACT_GID + contract_id)
    return None if node is None else webhook_contract(node)


@dataclass
class ContractReport:
    """What a reconciliation of contracts found."""

    listed: int = 0
    unseen: int = 0
    queued: int = 0
    denied: bool = False
    unseen_ids: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.denied:
            return (
                f"subscription contracts: not read (the token lacks {CONTRACTS_SCOPE}; "
                "Shopify shows an app only the contracts it created)"
            )
        return (
            f"subscription contracts: {self.listed} updated, {self.unseen} never seen by the "
            f"bridge, {self.queued} queued"
        )


def contract_search(since: datetime, until: datetime) -> str:
    """Admin API search syntax for contracts updated in [since, until] (`updated_at` is a
    documented filter of `subscriptionContracts`)."""
    return f"updated_at:>='{iso_z(since)}' AND updated_at:<='{iso_z(until)}'"


def reconcile_contracts(
    admin: AdminClient,
    store: Store,
    queue: Queue | None,
    *,
    shop: str,
    since: datetime,
    until: datetime,
    enqueue_drain: Callable[[Queue, str], None] | None = None,
    dry_run: bool = False,
) -> ContractReport:
    """Queue every contract updated in the window as the `subscription_contracts/update` it
    stands for. Unlike orders, a contract the bridge has seen can still have missed a change
    (a lost cancel), so all of them are queued: a snapshot no newer than the stored state
    changes nothing, and the deterministic ids keep a re-run from queuing them again.

    A token without the scope is reported (`denied`), not raised: most bridges are not the
    store's subscription app. Raises other AdminErrors and redis errors."""
    report = ContractReport()
    try:
        for page in admin.contract_pages(
            search=contract_search(since, until), sort_key="UPDATED_AT"
        ):
            bodies = [webhook_contract(node) for node in page.nodes]
            bodies = [b for b in bodies if b.get("id")]
            report.listed += len(bodies)
            names = [record_name(subscription_ref("shopify", str(b["id"]))) for b in bodies]
            missing = set(store.missing_states(shop, names))
            for body, name in zip(bodies, names, strict=True):
                if name in missing:
                    report.unseen += 1
                    report.unseen_ids.append(str(body["id"]))
                if dry_run:
                    continue
                env = contract_envelope(shop, body, origin="reconcile", topic=UPDATE_TOPIC)
                result = store.ingest(env)
                if result == INGEST_DUPLICATE:
                    continue
                report.queued += 1
                if result == INGEST_QUEUED_WAKE and enqueue_drain is not None and queue is not None:
                    enqueue_drain(queue, shop)
    except AdminAccessDenied:
        report.denied = True
        log.info("subscription contracts not readable", extra={"shop": shop})
        return report
    if report.listed:
        store.count(shop, "reconcile:contracts:listed", report.listed)
        store.count(shop, "reconcile:contracts:unseen", report.unseen)
    return report
