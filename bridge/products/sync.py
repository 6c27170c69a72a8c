"""Filling and refreshing the product cache from the Admin API (I/O).

Two reads, both queued through the drain as `backfill/product` webhooks (the drain stays the
one writer of shop state, and a product fact older than the cached record changes nothing):
- **wanted**: the products enrichment noted as missing (products/cache.py), read by id with
  `nodes(ids:)`, as many ids per query as the budget allows; an id the API does not know is
  queued as `gone`, so it is not asked again;
- **refresh**: every PRODUCT_REFRESH_EVERY_S, the products updated since the last refresh
  (`products(query: "updated_at:>'…'", sortKey: UPDATED_AT)`), a bounded number of pages per
  run, the pass's cursor saved between runs (a refused one is dropped and the pass read again
  from its start); this catches a lost `products/update` and metafield edits that bumped
  `updatedAt`.

Each query's requested cost is worked out before it is sent (backfill/cost.py) and sized to
the client's budget, never over Shopify's 1 000-point maximum. Raises AdminError and redis
errors; the sweep logs them and tries again on its next run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from bridge.backfill.admin import MAX_PAGE_NODES, AdminClient, AdminQueryRefused
from bridge.backfill.cost import requested_cost
from bridge.ids import gid_to_id, iso_z
from bridge.products.cache import WANTED, valid_id
from bridge.products.record import MetafieldKeys, record_name, split_key
from bridge.sources.shopify.products import BACKFILL_PRODUCT_TOPIC, GONE_FLAG, KEYS_FLAG
from bridge.store.facade import INGEST_DUPLICATE, INGEST_QUEUED_WAKE, Store, now_ms
from bridge.store.keys import Keys
from bridge.store.products import ProductSync, RefreshPass
from bridge.store.wire import Envelope

log = logging.getLogger(__name__)

PRODUCT_GID = "gid://shopify/Product/"
# Pages one refresh run reads at most (the next run goes on from its watermark).
MAX_REFRESH_PAGES = 5
# Products per refresh page asked for (fitted down to the budget).
REFRESH_PAGE_SIZE = 100
# Re-read a little before the watermark: Shopify's search index may lag the write [U].
REFRESH_OVERLAP = timedelta(minutes=5)
# The same lookup repeated within this window is one webhook id (deduplicated).
LOOKUP_BUCKET_MS = 3_600_000


def _fields() -> str:
    return (
        "id updatedAt productType vendor category { name } "
        "m0: metafield(namespace: $ns0, key: $key0) { value type } "
        "m1: metafield(namespace: $ns1, key: $key1) { value type }"
    )


_VARS = "$ns0: String!, $key0: String!, $ns1: String!, $key1: String!"
NODES_QUERY = f"""
query ProductNodes($ids: [ID!]!, {_VARS}) {{
  nodes(ids: $ids) {{ ... on Product {{ {_fields()} }} }}
}}
"""
PRODUCTS_QUERY = f"""
query Products($first: Int!, $after: String, $query: String, {_VARS}) {{
  products(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {{
    pageInfo {{ hasNextPage endCursor }}
    nodes {{ {_fields()} }}
  }}
}}
"""


def metafield_vars(keys: MetafieldKeys) -> dict[str, str]:
    """The store's two metafields as the queries' variables (never spliced into the text)."""
    ns0, key0 = split_key(keys.replenishable)
    ns1, key1 = split_key(keys.days_to_replenish)
    return {"ns0": ns0, "key0": key0, "ns1": ns1, "key1": key1}


def fit_ids(budget: float, want: int) -> int:
    """The most ids (at most `want` and 250, at least 1) whose `nodes` query fits the budget."""
    per = requested_cost(NODES_QUERY, {"ids": ["x"]})
    return max(1, min(want, MAX_PAGE_NODES, int(budget // per)))


def fit_products(budget: float, want: int) -> int:
    """The most products per page (at most `want` and 250, at least 1) fitting the budget."""
    one = requested_cost(PRODUCTS_QUERY, {"first": 1})
    per = requested_cost(PRODUCTS_QUERY, {"first": 2}) - one
    return max(1, min(want, MAX_PAGE_NODES, int((budget - (one - per)) // per)))


def product_body(node: dict[str, Any], keys: MetafieldKeys) -> dict[str, Any] | None:
    """An Admin API product node as the `backfill/product` body (REST-shaped, like the
    `products/update` webhook), naming the metafields it was asked for; None without an id."""
    pid = gid_to_id(node.get("id")) if isinstance(node.get("id"), str) else None
    if not pid:
        return None
    metafields = []
    for alias, key in (("m0", keys.replenishable), ("m1", keys.days_to_replenish)):
        field = node.get(alias)
        if isinstance(field, dict):
            namespace, name = split_key(key)
            metafields.append(
                {
                    "namespace": namespace,
                    "key": name,
                    "value": field.get("value"),
                    "type": field.get("type"),
                }
            )
    category = node.get("category")
    return {
        "id": pid,
        "updated_at": node.get("updatedAt"),
        "product_type": node.get("productType"),
        "vendor": node.get("vendor"),
        "category": category if isinstance(category, dict) else None,
        "metafields": metafields,
        KEYS_FLAG: list(keys.keys),
    }


def gone_body(product_id: str, keys: MetafieldKeys) -> dict[str, Any]:
    return {"id": product_id, GONE_FLAG: True, KEYS_FLAG: list(keys.keys)}


def product_envelope(shop: str, body: dict[str, Any], *, origin: str, at_ms: int) -> Envelope:
    """A product body as a queued webhook. Its id names the product, its version and the keys
    read, and the hour: the sweep asking again within the hour queues nothing twice."""
    version = body.get("updated_at") or ("gone" if body.get(GONE_FLAG) else "")
    keys = ",".join(body.get(KEYS_FLAG) or [])
    bucket = at_ms // LOOKUP_BUCKET_MS
    return Envelope(
        shop=shop,
        topic=BACKFILL_PRODUCT_TOPIC,
        webhook_id=f"{origin}:product:{body.get('id')}:{version}:{keys}:{bucket}",
        body=orjson.dumps(body),
        received_ms=at_ms,
    )


def fetch_products(
    admin: AdminClient, product_ids: Iterable[str], keys: MetafieldKeys
) -> list[dict[str, Any]]:
    """Bodies for the ids (found ones, and `gone` ones for ids the API does not know), as many
    ids per query as the budget allows. Raises AdminError."""
    ids = [pid for pid in dict.fromkeys(product_ids) if valid_id(pid)]
    variables = metafield_vars(keys)
    out: list[dict[str, Any]] = []
    at = 0
    while at < len(ids):
        chunk = ids[at : at + fit_ids(admin.budget(), len(ids) - at)]
        at += len(chunk)
        data = admin.query(NODES_QUERY, {**variables, "ids": [PRODUCT_GID + p for p in chunk]})
        found: dict[str, dict[str, Any]] = {}
        for node in data.get("nodes") or []:
            body = product_body(node, keys) if isinstance(node, dict) else None
            if body is not None:
                found[str(body["id"])] = body
        out.extend(found.get(pid) or gone_body(pid, keys) for pid in chunk)
    return out


@dataclass
class SyncReport:
    wanted: int = 0
    looked_up: int = 0
    refreshed: int = 0
    queued: int = 0
    pages: int = 0
    resumed: bool = False  # the refresh went on from a saved cursor
    restarted: bool = False  # the saved cursor was refused: the pass started again
    yielded: bool = False  # stopped between pages for waiting work (cursor saved)


def _queue(
    store: Store,
    shop: str,
    bodies: list[dict[str, Any]],
    origin: str,
    wake: Callable[[], None] | None,
) -> int:
    at = now_ms()
    envs = [product_envelope(shop, b, origin=origin, at_ms=at) for b in bodies]
    results = store.ingest_many(envs) if envs else []
    if INGEST_QUEUED_WAKE in results and wake is not None:
        wake()
    return sum(1 for r in results if r != INGEST_DUPLICATE)


def look_up_wanted(
    admin: AdminClient,
    store: Store,
    shop: str,
    keys: MetafieldKeys,
    *,
    limit: int,
    wake: Callable[[], None] | None = None,
) -> SyncReport:
    """Read the products the drain noted as wanted (oldest first, at most `limit`) and queue
    them. Raises AdminError and redis errors."""
    report = SyncReport()
    k = Keys(shop)
    raw = store.load_state([k.state(WANTED)]).get(k.state(WANTED))
    rec = orjson.loads(raw) if raw else {}
    ids = rec.get("ids") if isinstance(rec, dict) else None
    if not isinstance(ids, dict) or not ids or limit <= 0:
        return report
    report.wanted = len(ids)
    oldest = sorted(ids, key=lambda pid: (str(ids[pid]), pid))[:limit]
    bodies = fetch_products(admin, oldest, keys)
    report.looked_up = len(bodies)
    report.queued = _queue(store, shop, bodies, "lookup", wake)
    store.count(shop, "products:lookup:asked", len(bodies))
    return report


def refresh(
    admin: AdminClient,
    store: Store,
    sync: ProductSync,
    shop: str,
    keys: MetafieldKeys,
    now: datetime,
    *,
    wake: Callable[[], None] | None = None,
    max_pages: int = MAX_REFRESH_PAGES,
    should_yield: Callable[[], bool] | None = None,
) -> SyncReport:
    """Queue the products updated since the watermark, at most `max_pages` pages a run (a first
    run only sets the watermark to now). A pass that needs more pages saves its cursor after
    every page and the next run goes on from it; a pass that ends moves the watermark to the
    newest `updatedAt` it read. Between pages it stops early (cursor saved) when
    `should_yield()` says other work waits or the next page would wait for the cost bucket:
    only a run's first page ever sleeps on the bucket. A saved cursor the API refuses is
    dropped and the pass starts again from its beginning (same search), so a refused cursor
    never fails every run. Raises AdminError and redis errors (the pass stays saved: the next
    run resumes)."""
    report = SyncReport()
    saved = sync.saved_pass()
    if saved is None:
        mark = sync.watermark()
        if mark is None:
            sync.set_watermark(iso_z(now))
            return report
        try:
            since = datetime.fromisoformat(mark.replace("Z", "+00:00")) - REFRESH_OVERLAP
        except ValueError:
            sync.set_watermark(iso_z(now))
            return report
        current = RefreshPass(since=iso_z(since), after="", newest=mark)
    else:
        current = saved
        report.resumed = True
    variables: dict[str, Any] = {
        **metafield_vars(keys),
        "query": f"updated_at:>'{current.since}'",
        "after": current.after or None,
    }
    newest = current.newest
    for page in range(max_pages):
        variables["first"] = fit_products(admin.budget(), REFRESH_PAGE_SIZE)
        # After its first page (so every run advances the pass) the refresh stops rather than
        # hold the worker: when other jobs wait, or when the next page would sleep until the
        # bucket refills (the next sweep finds it refilled). Its cursor is saved below.
        if page and (
            (should_yield is not None and should_yield())
            or admin.wait_s(PRODUCTS_QUERY, variables) > 0
        ):
            report.yielded = True
            break
        try:
            data = admin.query(PRODUCTS_QUERY, variables)
        except AdminQueryRefused:
            if variables["after"] is None:
                raise
            # The saved cursor is refused (bulk edits, a sort Shopify no longer pages from it):
            # forget it and read the pass again from its start; the drain drops what it has.
            log.warning("product refresh cursor refused", extra={"shop": shop})
            sync.drop_pass()
            store.count(shop, "products:refresh:cursor_refused")
            report.restarted = True
            variables["after"] = None
            data = admin.query(PRODUCTS_QUERY, variables)
        conn = data.get("products") or {}
        nodes = [n for n in conn.get("nodes") or [] if isinstance(n, dict)]
        bodies = [b for b in (product_body(n, keys) for n in nodes) if b is not None]
        for body in bodies:
            updated = str(body.get("updated_at") or "")
            newest = max(newest, updated)
        report.refreshed += len(bodies)
        report.pages += 1
        report.queued += _queue(store, shop, bodies, "refresh", wake)
        info = conn.get("pageInfo") or {}
        if not (info.get("hasNextPage") and info.get("endCursor")):
            sync.set_watermark(newest)
            sync.drop_pass()
            break
        variables["after"] = str(info["endCursor"])
        # Saved after every page: a run that stops here (pages used up, yielding, a crash)
        # goes on from this page next time instead of reading the pass again.
        sync.save_pass(RefreshPass(since=current.since, after=variables["after"], newest=newest))
    if report.refreshed:
        store.count(shop, "products:refresh:read", report.refreshed)
    return report


def cached_names(product_ids: Iterable[str]) -> list[str]:
    """The state record names of these products (for `Store.missing_states`)."""
    return [record_name(pid) for pid in product_ids if valid_id(pid)]


def prefetch(
    admin: AdminClient,
    store: Store,
    shop: str,
    keys: MetafieldKeys,
    product_ids: Iterable[str],
) -> list[Envelope]:
    """The products among `product_ids` the cache lacks, read and ready to queue ahead of the
    historic orders naming them (the backfill), so those orders find them cached and their
    replenishment dates are computed at once. Raises AdminError and redis errors."""
    names = cached_names(product_ids)
    missing = [name.partition(":")[2] for name in store.missing_states(shop, names)]
    if not missing:
        return []
    at = now_ms()
    return [
        product_envelope(shop, body, origin="backfill", at_ms=at)
        for body in fetch_products(admin, missing, keys)
    ]
