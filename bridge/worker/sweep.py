"""Sweeps: the worker's periodic work that no webhook starts.

A ticker thread wakes shops whose drain or delivery job was lost (a killed worker) or whose held
calls are due for a retry; the sweep job (every SWEEP_EVERY_S) also expires old dead letters and
runs identity's time-driven work (identity/housekeeping.py) under each shop's drain lease, so a
shop's state keeps one writer.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

from bridge import keyed
from bridge.delivery.deadletters import DeadLetters
from bridge.identity import subscriptions
from bridge.identity.carts import HELD_CHECKOUTS, expire_held
from bridge.identity.decide import HELD_REFUNDS
from bridge.identity.housekeeping import expire_refunds
from bridge.identity.view import DecisionView
from bridge.monitoring.monitor import ensure_scheduled as ensure_check_scheduled
from bridge.services import Services
from bridge.store import StoreError
from bridge.store.facade import now_ms
from bridge.store.keys import SWEEP_SCHEDULED_KEY, Keys
from bridge.worker.queues import SWEEP, enqueue_drain, jobs_waiting

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 15
TICK_S = 1.0
# How long after a shop/redact the sweep removes counters a late worker wrote for the shop.
ERASED_RECHECK_S = 600
HOUSEKEEP_EVERY_S = 60
LEASE_MS = 30_000
MAX_ROUNDS = 3


def schedule_sweep(services: Services) -> None:
    services.queue.enqueue_in(
        timedelta(seconds=SWEEP_EVERY_S), SWEEP, result_ttl=0, failure_ttl=3600
    )


def wake_due(services: Services) -> None:
    """Wake drains and deliveries whose pending job was lost or whose retry is due, and drains
    of shops with a compliance request left pending."""

    now = now_ms()
    for shop in services.store.shops():
        keys = Keys(shop)
        depth = services.store.depth(shop)
        # A compliance request whose run failed (an erasure that could not take the delivery
        # lease in time, a Redis error) stays committed; a drain runs it first, even when no
        # webhook is queued to start one.
        drain_due = depth["inbound"] or services.store.queued_compliance(shop)
        if drain_due and services.store.wake(keys.drain_flag):
            enqueue_drain(services.queue, shop)
        due = services.store.next_due_ms(shop)
        if (depth["outbox"] or (due is not None and due <= now)) and services.store.wake(
            keys.deliver_flag
        ):
            services.deliver_soon(shop)


def tick(services: Services) -> None:
    while not services.stopping.wait(TICK_S):
        try:
            wake_due(services)
            # Counters of settles and commits (store/tally.py), written even while no job runs.
            services.store.flush_counters()
        except StoreError:
            continue  # Redis is away: the work loop waits for it too


@keyed.forgetting  # emails the held identity work named are not kept past the sweep
def sweep(services: Services) -> None:
    """Wake lost jobs, expire old dead letters and held identity work (once a minute per shop),
    then schedule the next sweep."""

    try:
        wake_due(services)
        letters = DeadLetters(services.store)
        shop_data = services.store.shop_data
        shops = services.store.shops()
        for erased in shop_data.recently_erased(now_ms() - ERASED_RECHECK_S * 1000):
            if erased not in shops:  # not installed again meanwhile
                shop_data.erase_counters(erased)  # see compliance/erasure.py, shop/redact
        for shop in shops:
            letters.expire(shop, now_ms(), services.settings.dead_letter_retention_s)
            if housekeep_due(services, shop):
                housekeep(services, shop)
                sync_products(services, shop)
    finally:
        services.store.mark(SWEEP_SCHEDULED_KEY, SWEEP_EVERY_S * 4)
        schedule_sweep(services)
    ensure_check_scheduled(services)  # issue 6: restarts a lost volume-check chain
    # issue 5: after rescheduling, so a failed reconciliation never stops the sweeps.
    from bridge.backfill.reconcile import maybe_reconcile

    maybe_reconcile(services)


def housekeep(services: Services, shop: str, now: datetime | None = None) -> int:
    """Expire held checkouts, refunds and subscription waits for one shop, then look up the
    Shopify contracts waits are due for (outside the lease); returns how many were settled.

    Skips (returns 0) when a drain holds the shop's lease: the next sweep tries again.
    """
    keys = Keys(shop)
    token = uuid.uuid4().hex
    if not services.store.acquire(keys.drain_lease, token, LEASE_MS):
        return 0
    lookups: list[str] = []
    try:
        now = now or datetime.now(UTC)
        s = services.settings
        held = [HELD_CHECKOUTS, HELD_REFUNDS, subscriptions.HELD_LINKS]
        loaded = dict(services.store.load_state([keys.state(name) for name in held]))
        for _ in range(MAX_ROUNDS):
            view = DecisionView(loaded, key_of=keys.state)
            dropped = expire_held(view, now, s.checkout_contact_wait_s)
            parked = expire_refunds(view, now, s.refund_order_wait_s)
            # Waits due for a lookup (`looked_up`) park after another wait: the Admin API lookup
            # of a Shopify contract, when configured, queues it in between.
            lookups, waited = subscriptions.expire_waits(view, now, s.subscription_wait_s)
            parked = parked + waited
            missing = view.misses - loaded.keys()
            if not missing:
                break
            loaded.update(services.store.load_state(missing))
        sets, dels = view.writes()
        if not (sets or dels or parked or view.counters):
            return 0
        services.store.write_housekeeping(shop, sets, dels, parked, view.counters)
        if dropped or parked:
            log.info(
                "identity housekeeping",
                extra={"shop": shop, "checkouts_dropped": dropped, "refunds_parked": len(parked)},
            )
    finally:
        services.store.release(keys.drain_lease, token)
    # The Admin API is asked with the lease released: a slow answer must not stall the drain.
    if lookups:
        note_lookups(services, shop, look_up_contracts(services, shop, lookups))
    return dropped + len(parked)


# Contracts looked up per shop and sweep: at ~30 points each, well inside any plan's bucket.
# Waits due beyond it are noted and park as unresolved (a flood of unknown contracts is a
# setup problem a human should see, not something to page through the Admin API).
MAX_LOOKUPS = 25
SHOPIFY_CONTRACT_WAIT = "sub:shopify:"
# A lookup is one query: retried once (the sweep runs again within a minute anyway).
LOOKUP_ATTEMPTS = 2
LOOKUP_RETRY_S = 0.2
LEASE_TRIES = 25


def _admin_problem(exc: Exception) -> str:
    """What went wrong with the Admin API, in the words the parked reason carries (no PII:
    AdminError texts name codes and statuses only)."""
    from bridge.backfill.admin import AdminAccessDenied, AdminCostExceeded

    if isinstance(exc, AdminAccessDenied):
        return "Admin API error: access denied (needs read_own_subscription_contracts)"
    if isinstance(exc, AdminCostExceeded):
        return "Admin API error: cost exceeded"
    return f"Admin API error: {exc}"


def look_up_contracts(services: Services, shop: str, names: list[str]) -> dict[str, str]:
    """Ask the Admin API for the Shopify contracts that waits named `sub:shopify:<id>` wait for;
    queue each one found as a `subscription_contracts/update` webhook (the drain then releases
    what waited on it). Returns each name's outcome for `record_lookup`; other waits (Recharge:
    the bridge has no Recharge API token) get none. Never raises an Admin API error."""
    from bridge.backfill.admin import AdminClient, AdminError
    from bridge.backfill.contracts import UPDATE_TOPIC, contract_envelope, fetch_contract

    wanted = [name for name in names if name.startswith(SHOPIFY_CONTRACT_WAIT)]
    if not wanted:
        return {}
    s = services.settings
    configured = (s.shopify_shop or "").strip().lower() == shop
    if not (configured and s.shopify_admin_token.get_secret_value()):
        return dict.fromkeys(wanted, "no Admin API token")
    admin = AdminClient.from_settings(s, timeout_s=s.http_timeout_s, max_attempts=LOOKUP_ATTEMPTS)
    outcomes: dict[str, str] = {}
    failed: str | None = None
    try:
        for n, name in enumerate(wanted):
            contract_id = name[len(SHOPIFY_CONTRACT_WAIT) :]
            if not contract_id.isascii() or not contract_id.isdigit():
                outcomes[name] = "not found"  # no Shopify contract has such an id
            elif failed is not None:
                outcomes[name] = failed  # the API is down or refusing: don't ask again now
            elif n >= MAX_LOOKUPS:
                outcomes[name] = f"not looked up: more than {MAX_LOOKUPS} due at once"
            else:
                try:
                    body = fetch_contract(admin, contract_id)
                except AdminError as exc:
                    failed = outcomes[name] = _admin_problem(exc)
                    continue
                if body is None:
                    outcomes[name] = "not found"
                    continue
                env = contract_envelope(shop, body, origin="lookup", topic=UPDATE_TOPIC)
                accepted = services.store.accept(env, services.settings.webhook_dedupe_ttl_s)
                if accepted.wake:
                    enqueue_drain(services.queue, shop)
                outcomes[name] = (
                    "found" if body.get("customer_id") else "found, but it names no customer"
                )
    finally:
        admin.close()
    log.info(
        "subscription contracts looked up",
        extra={"shop": shop, "asked": len(wanted), "failed": failed is not None},
    )
    return outcomes


def _lookup_counter(outcome: str) -> str:
    if outcome.startswith("found"):
        return "found"
    if outcome == "not found":
        return "not_found"
    if outcome == "no Admin API token":
        return "no_token"
    return "skipped" if outcome.startswith("not looked up") else "error"


def note_lookups(services: Services, shop: str, outcomes: dict[str, str]) -> None:
    """Record each lookup's outcome on its wait (the parked reason carries it), in a second
    housekeeping write under the lease. A wait the drain meanwhile released is left alone."""
    if not outcomes:
        return
    keys = Keys(shop)
    token = uuid.uuid4().hex
    for _ in range(LEASE_TRIES):
        if services.store.acquire(keys.drain_lease, token, LEASE_MS):
            break
        time.sleep(LOOKUP_RETRY_S)  # a drain is committing: they are short
    else:
        log.warning("lookup outcomes not recorded: the shop stayed busy", extra={"shop": shop})
        return
    try:
        names = [subscriptions.wait_name(name) for name in outcomes]
        loaded = dict(services.store.load_state([keys.state(name) for name in names]))
        view = DecisionView(loaded, key_of=keys.state)
        for name, outcome in outcomes.items():
            subscriptions.record_lookup(view, name, outcome)
            view.count(f"subscriptions:lookup:{_lookup_counter(outcome)}")
        sets, dels = view.writes()
        services.store.write_housekeeping(shop, sets, dels, [], view.counters)
    finally:
        services.store.release(keys.drain_lease, token)


def webhook_work_waits(services: Services) -> bool:
    """True when more jobs wait in the queue than the one drain a refresh page wakes itself
    (one LLEN): this worker is the only one free to take them while the sweep runs."""
    return jobs_waiting(services.queue) > 1


def sync_products(services: Services, shop: str, now: datetime | None = None) -> None:
    """Fill the product cache (issue 17): read the products the drain noted as wanted, and
    every PRODUCT_REFRESH_EVERY_S the products updated since the last refresh, queued through
    the drain (products/sync.py). Needs the shop's Admin API token (SHOPIFY_SHOP and
    SHOPIFY_ADMIN_TOKEN); never raises an Admin API or Redis error (the next sweep retries)."""
    from bridge.backfill.admin import AdminClient, AdminError
    from bridge.products import sync
    from bridge.store.products import ProductSync
    from bridge.worker.processor import metafield_keys

    s = services.settings
    configured = (s.shopify_shop or "").strip().lower() == shop
    if not (configured and s.shopify_admin_token.get_secret_value()):
        return
    keys = metafield_keys(s, services.stores.get(shop))
    admin = AdminClient.from_settings(s, timeout_s=s.http_timeout_s, max_attempts=LOOKUP_ATTEMPTS)

    def wake() -> None:
        enqueue_drain(services.queue, shop)

    try:
        report = sync.look_up_wanted(
            admin, services.store, shop, keys, limit=s.product_lookups_per_sweep, wake=wake
        )
        every = s.product_refresh_every_s
        sync_state = ProductSync(services.store.redis, shop)
        # A pass under way goes on at every sweep; a new one starts every `every` seconds.
        under_way = every and sync_state.saved_pass() is not None
        if under_way or (every and services.store.claim(Keys(shop).product_sync_due, every)):
            now = now or datetime.now(UTC)
            refreshed = sync.refresh(
                admin,
                services.store,
                sync_state,
                shop,
                keys,
                now,
                wake=wake,
                should_yield=lambda: webhook_work_waits(services),
            )
            report.refreshed, report.queued = refreshed.refreshed, report.queued + refreshed.queued
    except (AdminError, StoreError) as exc:
        log.warning("product sync failed", extra={"shop": shop, "error": type(exc).__name__})
        return
    finally:
        admin.close()
    if report.looked_up or report.refreshed:
        log.info(
            "products synced",
            extra={
                "shop": shop,
                "looked_up": report.looked_up,
                "refreshed": report.refreshed,
                "queued": report.queued,
            },
        )


def housekeep_due(services: Services, shop: str) -> bool:
    """True at most once a minute per shop (across every worker)."""
    return services.store.claim(Keys(shop).housekeeping, HOUSEKEEP_EVERY_S)
