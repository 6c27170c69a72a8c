"""Historic orders -> the live drain path: readers, checkpoint, rate cap.

The backfill writes no bridge state itself. Every historic order becomes an Envelope with the
internal topic `backfill/order` (its refunds `backfill/refund`) and a deterministic webhook id,
queued with `Store.ingest` exactly like a webhook; the drain stays the single writer of the
order index, so an order is never counted twice, a re-run is deduplicated (and sends the same
messageIds), and a live order arriving meanwhile is never overwritten.

Admin API orders are turned into webhook-shaped bodies by sources/shopify/graphql.py (pure);
the category trait names here are pure too. `BulkIndex` groups a bulk export's
lines by `__parentId` in an SQLite scratch file, so a file of gigabytes is assembled in bounded
memory. `Backfill` is the shell that reads, maps (to validate and count), rate-limits, queues
(pausing while the shop's queue is full, so live webhooks are not stuck behind an export) and
checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
from rq import Queue
from tqdm import tqdm

from bridge.backfill.contracts import contract_envelope
from bridge.identity import decide
from bridge.identity.records import StateView
from bridge.ids import iso_z
from bridge.jsonio import parse_body
from bridge.sources import MappingError, Source
from bridge.sources.shopify.graphql import connection_nodes, is_graphql_order, rest_order
from bridge.store.backfill import Checkpoint, ProductTypeCache
from bridge.store.facade import INGEST_DUPLICATE, INGEST_QUEUED_WAKE, Store, now_ms
from bridge.store.wire import Envelope
from bridge.worker.processor import ProcessConfig

log = logging.getLogger(__name__)

ORDER_TOPIC = "backfill/order"
REFUND_TOPIC = "backfill/refund"
TRAITS_TOPIC = "backfill/traits"
EVENTS_FLAG = "_cartbridge_events"

# Customer.io: at most 300 attributes per person, attribute names at most 150 bytes.
MAX_ATTRIBUTE_NAME_BYTES = 150
CATEGORY_PREFIX = "last_order_date_"

# --- JSONL files ----------------------------------------------------------------------------


def _gid_type(gid: Any) -> str:
    parts = str(gid or "").split("/")
    return parts[3] if len(parts) > 4 and parts[0] == "gid:" else ""


def _gid_number(gid: Any) -> tuple[int, str]:
    tail = str(gid or "").rsplit("/", 1)[-1]
    return (int(tail), "") if tail.isdigit() else (0, tail)


_CHILD_LISTS = {
    "LineItem": "lineItems",
    "RefundLineItem": "refundLineItems",
    "OrderTransaction": "transactions",
    "Refund": "refunds",
}


class BulkIndex:
    """Bulk JSONL lines grouped by `__parentId` in an SQLite file, so orders are assembled
    without holding the file in memory.

    Shopify gives no ordering guarantee for child lines (from API 2026-01 a child may even
    come before its parent), so nothing can be assembled until every line has been read; a
    large store's file is gigabytes, which is why the grouping lives on disk. Parents are
    kept in file order. Raises MappingError on a line that is not JSON.
    """

    BATCH = 5000

    def __init__(self, directory: Path | None = None) -> None:
        if directory is None:
            self._path: Path | None = None
            self.db = sqlite3.connect(":memory:")
        else:
            fd, name = tempfile.mkstemp(prefix="cartbridge-bulk-", suffix=".sqlite", dir=directory)
            os.close(fd)
            self._path = Path(name)
            self.db = sqlite3.connect(name)
        # A scratch file rebuilt on every run: no journal, no fsync, a bounded page cache.
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-16000;"
            "PRAGMA temp_store=FILE;"
            "CREATE TABLE roots (seq INTEGER PRIMARY KEY, body BLOB);"
            "CREATE TABLE children (parent TEXT, body BLOB);"
        )
        self.roots = 0

    def load(self, raw_lines: Iterable[bytes]) -> int:
        """Read every line; returns the number of orders."""
        roots: list[tuple[bytes]] = []
        children: list[tuple[str, bytes]] = []
        for raw in raw_lines:
            obj = _parse_line(raw)
            if obj is None:
                continue
            parent = obj.get("__parentId")
            if parent is not None:
                children.append((str(parent), raw))
            elif is_graphql_order(obj):
                roots.append((raw,))
            if len(children) >= self.BATCH or len(roots) >= self.BATCH:
                self._flush(roots, children)
        self._flush(roots, children)
        self.db.execute("CREATE INDEX children_parent ON children (parent)")
        self.db.commit()
        return self.roots

    def _flush(self, roots: list[tuple[bytes]], children: list[tuple[str, bytes]]) -> None:
        self.db.executemany("INSERT INTO roots (body) VALUES (?)", roots)
        self.db.executemany("INSERT INTO children VALUES (?, ?)", children)
        self.roots += len(roots)
        roots.clear()
        children.clear()

    def _attach(self, obj: dict[str, Any]) -> None:
        """Put the children of `obj` (and of its inline refunds) into their lists."""
        for name in _CHILD_LISTS.values():
            if name in obj:
                obj[name] = connection_nodes(obj.get(name))
        rows = self.db.execute("SELECT body FROM children WHERE parent = ?", (str(obj.get("id")),))
        children = [orjson.loads(raw) for (raw,) in rows]
        # The file's order means nothing; ids grow as Shopify creates lines, so they give
        # the order the lines were added in, the same on every run.
        children.sort(key=lambda c: _gid_number(c.get("id")))
        for child in children:
            child.pop("__parentId", None)
            kind = _CHILD_LISTS.get(_gid_type(child.get("id")))
            if kind is not None:
                obj.setdefault(kind, []).append(child)
        for refund in obj.get("refunds") or []:
            if isinstance(refund, dict) and refund.get("id"):
                self._attach(refund)

    def orders(self, start: int = 0) -> Iterator[dict[str, Any]]:
        """Whole GraphQL orders in file order, from order number `start` (0-based) on."""
        cursor = self.db.execute("SELECT body FROM roots WHERE seq > ? ORDER BY seq", (start,))
        while True:
            rows = cursor.fetchmany(500)
            if not rows:
                return
            for (raw,) in rows:
                order = orjson.loads(raw)
                self._attach(order)
                yield order

    def close(self) -> None:
        self.db.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)


def assemble_bulk(lines: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """GraphQL bulk-operation lines -> whole GraphQL orders in file order, joined by
    `__parentId` whatever the line order (held in memory: for tests and small files)."""
    index = BulkIndex()
    try:
        index.load(orjson.dumps(line) for line in lines)
        return list(index.orders())
    finally:
        index.close()


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        obj = parse_body(raw)
    except ValueError:
        raise MappingError("a line is not JSON") from None
    return obj if isinstance(obj, dict) else None


def _json_lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as fh:
        for raw in fh:
            raw = raw.strip()
            if not raw:
                continue
            try:
                obj = parse_body(raw)
            except ValueError:
                raise MappingError(f"{path.name}: a line is not JSON") from None
            if isinstance(obj, dict):
                yield obj


def file_format(path: Path) -> str:
    """`bulk` (GraphQL bulk-operation output) or `rest` (one REST order per line)."""
    for obj in _json_lines(path):
        return "bulk" if "__parentId" in obj or is_graphql_order(obj) else "rest"
    return "rest"


def read_file_orders(
    path: Path, start: int = 0, on_total: Callable[[int], None] | None = None
) -> Iterator[dict[str, Any]]:
    """REST-shaped orders from a JSONL file of either format, in file order, from record
    `start` on (0-based). A bulk file is grouped on disk beside it first; `on_total` then
    learns how many orders it holds (one pass over the file instead of two)."""
    if file_format(path) == "bulk":
        index = BulkIndex(path.parent)
        try:
            with path.open("rb") as fh:
                total = index.load(fh)
            if on_total is not None:
                on_total(total)
            for order in index.orders(start):
                yield rest_order(order)
        finally:
            index.close()
        return
    for n, obj in enumerate(_json_lines(path)):
        if n < start:
            continue
        # A REST export may wrap each order as {"order": {...}}.
        inner = obj.get("order")
        yield dict(inner) if isinstance(inner, dict) else obj


# --- per-category last purchase dates --------------------------------------------------------


def category_trait_name(product_type: str | None) -> str | None:
    """`last_order_date_<slug>` for a product type, at most 150 bytes; None when nothing is left.

    The slug is ASCII lower case with `_` between words, so the same type always gets the same
    attribute name and the name is always a valid, short Customer.io attribute.
    """
    if not product_type:
        return None
    ascii_text = unicodedata.normalize("NFKD", product_type).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")
    if not slug:
        return None
    room = MAX_ATTRIBUTE_NAME_BYTES - len(CATEGORY_PREFIX)
    return CATEGORY_PREFIX + slug[:room].rstrip("_")


def category_traits(latest: dict[str, datetime], limit: int) -> dict[str, str]:
    """The `limit` most recent categories as `{last_order_date_<slug>: ISO date}`. Pure.

    `latest` maps product type -> last purchase time; types with the same slug merge (max).
    """
    merged: dict[str, datetime] = {}
    for product_type, at in latest.items():
        name = category_trait_name(product_type)
        if name is not None and (name not in merged or at > merged[name]):
            merged[name] = at
    newest = sorted(merged.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[: max(limit, 0)]
    return {name: iso_z(at) for name, at in sorted(newest)}


# --- checkpoint, rate cap, progress ------------------------------------------------------------


class RateCap:
    """At most `rate` acquisitions per second (a token bucket one second deep)."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.clock = clock
        self.sleep = sleep
        self.tokens = 1.0
        self.at = clock()

    def acquire(self) -> None:
        now = self.clock()
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            wait = (1.0 - self.tokens) / self.rate
            self.sleep(wait)
            self.at = self.clock()
            self.tokens = 1.0
        self.tokens -= 1.0


class Progress:
    """A progress bar (tqdm) with rate and ETA, drawn only when `stream` is a terminal."""

    FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} orders [{elapsed}, ETA {remaining}, {rate_fmt}]"

    def __init__(self, total: int | None, stream: IO[str], start: int = 0) -> None:
        self.bar = tqdm(
            total=total,
            initial=start,
            file=stream,
            unit=" orders",
            bar_format=self.FORMAT if total else None,
            disable=not stream.isatty(),
            mininterval=0.2,
            dynamic_ncols=True,
        )

    def set_total(self, total: int) -> None:
        self.bar.total = total
        self.bar.bar_format = self.FORMAT
        self.bar.refresh()

    def update(self, done: int, *, force: bool = False) -> None:
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        if force:
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


# Orders queued in one round trip to Redis (a round trip per order capped a run at ~600/s).
QUEUE_CHUNK = 50
BACKLOG_PAUSE_S = 0.02


# --- envelopes --------------------------------------------------------------------------------


def order_envelopes(
    shop: str, order: dict[str, Any], *, events: bool, received_ms: int
) -> list[Envelope]:
    """The order's `backfill/order` envelope, then one `backfill/refund` per refund.

    Webhook ids are deterministic (`backfill:<order id>:<updated_at>`), so a re-run is
    deduplicated by the same 72 h window as webhooks. An events run has ids of its own
    (`backfill:events:...`): after an identify-only run it must still be processed, and the
    drain's once-only rules then send each order's events once, live or backfilled.
    """
    mode = "backfill:events:" if events else "backfill:"
    body = dict(order)
    if events:
        body[EVENTS_FLAG] = True
    order_id = str(order.get("id"))
    updated = str(order.get("updated_at") or order.get("created_at") or "")
    out = [
        Envelope(
            shop=shop,
            topic=ORDER_TOPIC,
            webhook_id=f"{mode}{order_id}:{updated}",
            body=orjson.dumps(body),
            received_ms=received_ms,
        )
    ]
    for refund in order.get("refunds") or []:
        if not isinstance(refund, dict) or refund.get("id") is None:
            continue
        rbody = {**refund, "order_id": refund.get("order_id") or order_id}
        if events:
            rbody[EVENTS_FLAG] = True
        out.append(
            Envelope(
                shop=shop,
                topic=REFUND_TOPIC,
                webhook_id=f"{mode}refund:{refund['id']}",
                body=orjson.dumps(rbody),
                received_ms=received_ms,
            )
        )
    return out


def traits_envelope(shop: str, person: dict[str, Any], traits: dict[str, str]) -> Envelope:
    """A `backfill/traits` envelope: extra traits (category dates) for one customer."""
    at = max(traits.values())
    body = {"customer": person, "traits": traits, "at": at}
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    key = person.get("id") or person.get("email") or "?"
    return Envelope(
        shop=shop,
        topic=TRAITS_TOPIC,
        webhook_id=f"backfill:traits:{key}:{digest}",
        body=orjson.dumps(body),
        received_ms=now_ms(),
    )


# --- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """Orders to queue, and the checkpoint position once all of them are queued."""

    orders: list[dict[str, Any]]
    position: str


@dataclass
class Summary:
    """What a run did, in the words of someone who runs it."""

    customers: int = 0
    orders: int = 0
    refunds: int = 0
    identified: int = 0  # orders whose customer gets (or would get) their order traits
    events: int = 0  # order_completed and order_refunded to send
    test_orders: int = 0
    no_contact: int = 0
    already_sent: int = 0
    errors: int = 0
    empty_emails: int = 0
    with_customer: int = 0
    category_updates: int = 0
    products: int = 0  # products read and queued ahead of their orders (issue 17)
    resumed_from: str | None = None
    interrupted: bool = False
    samples: list[dict[str, Any]] = field(default_factory=list)
    # Subscription contracts (Admin API runs): how many were queued, or why none were read.
    contracts_read: bool = False
    contracts: int = 0
    contracts_note: str | None = None

    COUNTED = (
        "orders",
        "refunds",
        "identified",
        "events",
        "test_orders",
        "no_contact",
        "already_sent",
        "errors",
    )

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.COUNTED}

    def lines(self, *, dry_run: bool, events: bool) -> list[str]:
        would = "that would be " if dry_run else ""
        if events:
            sent = f"events {would or 'queued to be '}sent: {self.events}"
        else:
            sent = "events sent: none (identify only; add --events for order_completed)"
        return [
            f"customers {would}identified: {self.customers}",
            f"orders counted: {self.orders} (with {self.refunds} refunds)",
            sent,
            f"skipped: {self.test_orders} test orders, {self.no_contact} with no email or "
            f"customer id, {self.already_sent} already sent",
            f"errors: {self.errors}",
            *([f"products read ahead of their orders: {self.products}"] if self.products else []),
            *self.contract_lines(would),
        ]

    def contract_lines(self, would: str) -> list[str]:
        if self.contracts_note is not None:
            return [f"subscription contracts: {self.contracts_note}"]
        if self.contracts_read:
            return [f"subscription contracts {would}queued: {self.contracts}"]
        return []


@dataclass
class BackfillOptions:
    shop: str
    config: ProcessConfig
    events: bool = False
    dry_run: bool = False
    rate_per_s: float = 50.0
    category_traits: bool = False
    category_limit: int = 50
    sample_size: int = 5
    # Most webhooks left waiting in the shop's inbound queue before the backfill adds more.
    # Live webhooks queue behind the backfill's, so this bounds the delay a live order sees
    # (20 waiting plus one chunk in flight: ~0.1 s of one worker's drain; see BENCHMARKS.md).
    max_backlog: int = 20


def _person_key(order: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    customer = order.get("customer") or {}
    cid = customer.get("id") if isinstance(customer, dict) else None
    email = order.get("email") or (customer.get("email") if isinstance(customer, dict) else None)
    person: dict[str, Any] = {}
    if cid is not None:
        person["id"] = str(cid)
    if email:
        person["email"] = str(email).strip().lower()
    key = person.get("id") or person.get("email")
    return key, person


def _order_time(order: dict[str, Any]) -> datetime | None:
    for name in ("processed_at", "created_at"):
        raw = order.get(name)
        if raw:
            try:
                at = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
            except ValueError:
                continue
            if at.tzinfo is not None:
                return at
    return None


class Backfill:
    """One backfill run: map each order in-process (validate, count, sample), queue it, checkpoint.

    Never writes bridge state; raises redis errors as they come (the checkpoint makes a rerun
    resume after the last finished batch).
    """

    def __init__(
        self,
        opts: BackfillOptions,
        *,
        source: Source,
        store: Store | None,
        queue: Queue | None,
        checkpoint: Checkpoint | None,
        product_types: ProductTypeCache | None = None,
        rate: RateCap | None = None,
        enqueue_drain: Callable[[Queue, str], None] | None = None,
        products: Callable[[list[str]], list[Envelope]] | None = None,
    ) -> None:
        self.opts = opts
        # issue 17: reads the products the orders name that the cache lacks (as envelopes),
        # queued ahead of the orders so their replenishment dates are computed at once.
        self.products = products
        self._product_ids: dict[str, None] = {}
        self._products_done: set[str] = set()
        self.source = source
        self.store = store
        self.queue = queue
        self.checkpoint = checkpoint
        self.product_types = product_types
        self.rate = rate or RateCap(opts.rate_per_s)
        self._enqueue_drain = enqueue_drain
        self.summary = Summary()
        # A dry run decides on one view for the whole run, as the drain's state would evolve.
        self._view: StateView | None = StateView() if opts.dry_run else None
        # Customers are counted in the checkpoint (a HyperLogLog: a few KB whatever the
        # store's size, and a resumed run keeps counting); a dry run counts in memory.
        self._people_log = None if opts.dry_run else checkpoint
        self._people: set[str] = set()
        self._batch_people: list[str] = []
        self._pending: list[tuple[list[Envelope], int]] = []
        self.backpressure_waits = 0
        self._persons: dict[str, dict[str, Any]] = {}
        self._categories: dict[str, dict[str, datetime]] = {}
        self._dirty_categories: dict[str, str] = {}
        self._ctx = opts.config.map_context(opts.shop)
        self._policy = opts.config.policy(opts.shop)

    def resume_position(self) -> str | None:
        if self.checkpoint is None:
            return None
        state = self.checkpoint.load()
        position = state.get("position")
        if position:
            self.summary.resumed_from = position
            for name in Summary.COUNTED:
                setattr(self.summary, name, int(state.get(name, "0")))
            for field_name, value in self.checkpoint.categories().items():
                who, _, ptype = field_name.partition("\x1f")
                at = datetime.fromisoformat(value)
                self._categories.setdefault(who, {})[ptype] = at
        return position

    def _map(self, envs: list[Envelope]) -> tuple[int, int, str | None]:
        """Map the envelopes: (identify calls, events, why skipped). Raises MappingError.

        A dry run decides on one view kept for the whole run, so the traits it shows are the
        ones the real run sends (the third order of a customer says `orders_count: 3`); a real
        run only maps (the drain decides), counting the events the mapping asks for.
        """
        identifies = events = 0
        skipped = None
        for env in envs:
            mapped = self.source.map(env.topic, orjson.loads(env.body), self._ctx)
            if mapped.skipped:
                skipped = mapped.skipped
                continue
            if self._view is None:
                identifies += len(mapped.identifies)
                events += len(mapped.events)
                continue
            for out in decide(mapped, self._view, self._policy):
                if out.call.get("type") == "track":
                    events += 1
                else:
                    identifies += 1
                if len(self.summary.samples) < self.opts.sample_size:
                    self.summary.samples.append(out.call)
        return identifies, events, skipped

    def _note_categories(self, order: dict[str, Any], key: str) -> None:
        at = _order_time(order)
        if at is None:
            return
        lines = [li for li in order.get("line_items") or [] if isinstance(li, dict)]
        types = {
            str(li["product_id"]): li.get("product_type") for li in lines if li.get("product_id")
        }
        unknown = [pid for pid, t in types.items() if not t]
        if unknown and self.product_types is not None:
            types.update(self.product_types.types(unknown))
        mine = self._categories.setdefault(key, {})
        for ptype in {t for t in types.values() if t}:
            if ptype not in mine or at > mine[ptype]:
                mine[ptype] = at
                self._dirty_categories[f"{key}\x1f{ptype}"] = at.isoformat()

    def _wait_for_room(self) -> None:
        """Block while the shop's inbound queue holds `max_backlog` or more webhooks."""
        assert self.store is not None
        while self.store.inbound_length(self.opts.shop) >= self.opts.max_backlog:
            self.backpressure_waits += 1
            # Short enough that the drain never runs dry while the backfill sleeps.
            time.sleep(BACKLOG_PAUSE_S)

    def _queue(self, orders: list[list[Envelope]]) -> list[bool]:
        """Queue each order's envelopes, all in one round trip; per order, False when its own
        envelope was already sent (its id seen by the drain)."""
        assert self.store is not None and self.queue is not None
        self._wait_for_room()
        flat = [env for envs in orders for env in envs]
        results = self.store.ingest_many(flat) if flat else []
        if INGEST_QUEUED_WAKE in results and self._enqueue_drain is not None:
            self._enqueue_drain(self.queue, self.opts.shop)
        fresh = []
        at = 0
        for envs in orders:
            fresh.append(results[at] != INGEST_DUPLICATE)
            at += len(envs)
        return fresh

    def _queue_products(self) -> None:
        """Queue the products of the orders about to be queued, once per run (issue 17)."""
        ids = [pid for pid in self._product_ids if pid not in self._products_done]
        self._product_ids = {}
        if not ids or self.products is None:
            return
        assert self.store is not None
        self._products_done.update(ids)
        envs = self.products(ids)
        if envs:
            self._wait_for_room()
            self.store.ingest_many(envs)
            self.summary.products += len(envs)

    def _flush(self) -> None:
        """Queue the orders handled since the last flush and count what they send."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self._queue_products()
        s = self.summary
        for fresh, (_, events) in zip(
            self._queue([envs for envs, _ in pending]), pending, strict=True
        ):
            if fresh:
                s.identified += 1
                s.events += events
            else:
                s.already_sent += 1

    def handle(self, order: dict[str, Any]) -> None:
        s = self.summary
        s.orders += 1
        key, person = _person_key(order)
        customer = order.get("customer")
        if isinstance(customer, dict) and customer.get("id") is not None:
            s.with_customer += 1
            if not person.get("email"):
                s.empty_emails += 1
        envs = order_envelopes(self.opts.shop, order, events=self.opts.events, received_ms=now_ms())
        s.refunds += len(envs) - 1
        try:
            identifies, events, skipped = self._map(envs)
        except MappingError as exc:
            s.errors += 1
            log.warning("backfill order not mappable", extra={"reason": str(exc)})
            return
        if skipped and identifies + events == 0:
            s.test_orders += 1
            return
        if not key:
            s.no_contact += 1
            return
        self._note_person(key, person)
        if self.opts.category_traits:
            self._note_categories(order, key)
        if self.opts.dry_run:
            s.identified += 1
            s.events += events
            return
        self.rate.acquire()
        if self.products is not None:
            for line in order.get("line_items") or []:
                pid = line.get("product_id") if isinstance(line, dict) else None
                if pid is not None:
                    self._product_ids[str(pid)] = None
        self._pending.append((envs, events))
        if len(self._pending) >= QUEUE_CHUNK:
            self._flush()

    def _note_person(self, key: str, person: dict[str, Any]) -> None:
        if self.opts.category_traits:
            self._persons[key] = person
        if self._people_log is None:
            self._people.add(key)
        else:
            self._batch_people.append(key)

    def finish_categories(self) -> None:
        """Queue one `backfill/traits` per customer with category dates (opt-in)."""
        if not self.opts.category_traits:
            return
        for key, latest in self._categories.items():
            traits = category_traits(latest, self.opts.category_limit)
            person = self._persons.get(key) or ({"email": key} if "@" in key else {"id": key})
            if not traits:
                continue
            self.summary.category_updates += 1
            if self.opts.dry_run:
                if len(self.summary.samples) < self.opts.sample_size:
                    self.summary.samples.append({"type": "identify", "traits": traits})
                continue
            self._queue([[traits_envelope(self.opts.shop, person, traits)]])

    def handle_contract(self, body: dict[str, Any]) -> None:
        """One webhook-shaped contract (graphql.py `webhook_contract`): map it (to validate and
        count), then queue it as `backfill/subscription_contract`."""
        env = contract_envelope(self.opts.shop, body, origin="backfill")
        try:
            self._map([env])
        except MappingError as exc:
            self.summary.errors += 1
            log.warning("backfill contract not mappable", extra={"reason": str(exc)})
            return
        self.summary.contracts += 1
        if self.opts.dry_run:
            return
        self.rate.acquire()
        self._pending.append(([env], 0))
        if len(self._pending) >= QUEUE_CHUNK:
            self._flush_contracts()

    def _flush_contracts(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._queue([envs for envs, _ in pending])

    def run_contracts(self, contracts: Iterable[dict[str, Any]]) -> Summary:
        """Queue every contract (after the orders: history first, then today's state).
        Ctrl-C stops cleanly; re-running queues nothing twice (deterministic ids)."""
        self.summary.contracts_read = True
        try:
            for body in contracts:
                self.handle_contract(body)
            self._flush_contracts()
        except KeyboardInterrupt:
            self.summary.interrupted = True
        return self.summary

    def run(self, batches: Iterable[Batch], progress: Progress | None = None) -> Summary:
        """Queue every order of every batch; checkpoint after each batch. Ctrl-C stops cleanly."""
        try:
            for batch in batches:
                for order in batch.orders:
                    self.handle(order)
                    if progress is not None:
                        progress.update(self.summary.orders)
                self._flush()  # the batch is queued whole before its position is saved
                if self._people_log is not None:
                    self._people_log.save(
                        batch.position,
                        self.summary.counts(),
                        self._dirty_categories,
                        self._batch_people,
                    )
                    self._dirty_categories = {}
                    self._batch_people = []
            self.finish_categories()
            if self._people_log is not None:
                self.summary.customers = self._people_log.people()
                self._people_log.clear()
        except KeyboardInterrupt:
            self.summary.interrupted = True
        finally:
            if progress is not None:
                progress.update(self.summary.orders, force=True)
                progress.close()
        if self._people_log is None:
            self.summary.customers = len(self._people)
        elif self.summary.interrupted:
            self.summary.customers = self._people_log.people()
        return self.summary


def file_batches(
    path: Path,
    start: int = 0,
    size: int = 200,
    on_total: Callable[[int], None] | None = None,
) -> Iterator[Batch]:
    """Batches of a JSONL file's orders from record `start`; positions count records."""
    chunk: list[dict[str, Any]] = []
    n = start
    for n, order in enumerate(read_file_orders(path, start, on_total), start=start + 1):
        chunk.append(order)
        if len(chunk) >= size:
            yield Batch(chunk, str(n))
            chunk = []
    if chunk:
        yield Batch(chunk, str(n))


def count_file_orders(path: Path) -> int | None:
    """Orders in a REST file; None for a bulk file, whose count comes with its grouping."""
    if file_format(path) == "bulk":
        return None
    return sum(1 for _ in _json_lines(path))


def file_job(path: Path) -> str:
    """A stable job name for a file (its absolute path and size)."""
    resolved = path.resolve()
    digest = hashlib.sha256(f"{resolved}\x1f{resolved.stat().st_size}".encode()).hexdigest()
    return "file:" + digest[:16]
