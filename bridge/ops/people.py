"""Person lookup: who is behind a customer id, an email, a cart, a checkout or an order, what
the bridge holds about them, and what it did with their calls lately.

The records are identity's (identity/graph.py names them); the ledger of recent calls is
store/ops.py's, named by the keyed person hash of each name the person's calls went under
(their customer id or email, and the anonymous ids of their carts before they were known).
Emails are looked up by their keyed hash only; nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge import keyed
from bridge.identity.graph import MAX_MERGE_HOPS, email_key, is_email, person_key
from bridge.store.facade import Store

CUSTOMER = "customer_id"
EMAIL = "email"
CART = "cart"
CHECKOUT = "checkout"
ORDER = "order"
KINDS = {
    CUSTOMER: "Customer id",
    EMAIL: "Email",
    CART: "Cart token",
    CHECKOUT: "Checkout token or id",
    ORDER: "Order id",
}
MAX_VALUE_CHARS = 320
SHOWN_CALLS = 100


class BadLookup(ValueError):
    """The lookup's input cannot name anyone (unknown kind, empty or oversized value)."""


@dataclass
class Call:
    """One call and what became of it: its ledger entries folded by messageId (an entry
    without one, a call identity held back before it had an id, stands alone). `outcome`,
    `reason` and `at_ms` are the newest entry's; `history` every outcome, oldest first."""

    at_ms: int
    event: str
    outcome: str
    message_id: str = ""
    reason: str = ""
    topic: str = ""
    history: list[str] = field(default_factory=list)


def fold(entries: list[dict[str, Any]]) -> list[Call]:
    """Ledger entries (any order, from several ledgers) as calls, newest first."""
    calls: dict[str, Call] = {}
    alone: list[Call] = []
    for doc in sorted(entries, key=lambda d: int(d.get("t") or 0)):
        mid = str(doc.get("m") or "")
        at = int(doc.get("t") or 0)
        outcome = str(doc.get("o") or "")
        call = calls.get(mid) if mid else None
        if call is None:
            call = Call(at, str(doc.get("e") or ""), outcome, mid, history=[])
            if mid:
                calls[mid] = call
            else:
                alone.append(call)
        call.at_ms, call.outcome = at, outcome
        call.reason = str(doc.get("r") or "")
        call.topic = call.topic or str(doc.get("w") or "")
        call.history.append(outcome)
    return sorted([*calls.values(), *alone], key=lambda c: c.at_ms, reverse=True)


@dataclass
class PersonView:
    """What the lookup found: `user` is the person's id as their calls carry it (customer id
    or email), `anonymous` the anonymous ids their carts had; `records` the state records
    read, by name; `traits` the traits last sent (trait -> (version, value)); `calls` the
    ledger, newest first."""

    found: bool = False
    user: str | None = None
    anonymous: list[str] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    traits: list[tuple[str, str, Any]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)


def _json(raw: bytes | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


class _Reader:
    """State records by name, read a round trip per step and remembered."""

    def __init__(self, store: Store, shop: str) -> None:
        self.store, self.shop = store, shop
        self.seen: dict[str, dict[str, Any] | None] = {}

    def get(self, *names: str) -> list[dict[str, Any] | None]:
        wanted = [n for n in dict.fromkeys(names) if n not in self.seen]
        if wanted:
            for name, raw in self.store.ops.records(self.shop, wanted).items():
                self.seen[name] = _json(raw)
        return [self.seen.get(n) for n in names]


def _follow(reader: _Reader, cid: str, merged: list[str] | None = None) -> str:
    """The customer `cid` is now (merges followed); the ids merged away on the way are added
    to `merged` (their calls went under them, before the merge)."""
    for _ in range(MAX_MERGE_HOPS):
        (rec,) = reader.get("cust:" + cid)
        kept = rec.get("merged_into") if rec else None
        if not kept or kept == cid:
            return cid
        if merged is not None:
            merged.append(cid)
        cid = str(kept)
    return cid


@keyed.forgetting  # the looked-up email is not kept by the web process (bridge/keyed.py)
def lookup(store: Store, shop: str, kind: str, value: str) -> PersonView:
    """Find the person `value` (of `kind`, one of KINDS) names in `shop`. Raises
    BadLookup for an unknown kind or an empty or oversized value, StoreError on Redis."""
    # A lone surrogate cannot be hashed or sent to Redis: it becomes "?" (and finds nobody).
    value = value.encode("utf-8", "replace").decode().strip()
    if kind not in KINDS:
        raise BadLookup("unknown kind of lookup")
    if not value or len(value) > MAX_VALUE_CHARS:
        raise BadLookup("enter a value (at most 320 characters)")
    r = _Reader(store, shop)
    view = PersonView()
    user: str | None = None
    anons: list[str] = []
    carts: list[str] = []
    merged: list[str] = []  # customer ids merged into the person's: their calls are theirs
    if kind == CUSTOMER:
        user = _follow(r, value, merged)
        view.links.append(("customer id", value))
        if user != value:
            view.links.append(("merged into", user))
    elif kind == EMAIL:
        (link,) = r.get(email_key(value))
        cid = link.get("customer_id") if link else None
        user = _follow(r, str(cid)) if cid else value.strip().lower()
        view.links.append(
            ("email", "(as entered, found by its keyed hash)" if link else "(no record)")
        )
        if cid:
            view.links.append(("customer id", str(user)))
    else:
        name = {CART: "cart:", CHECKOUT: "checkout:", ORDER: "order:"}[kind] + value
        (rec,) = r.get(name)
        if rec is not None:
            view.records[name] = rec
            linked = rec.get("user")
            if linked:
                user = str(linked)
            if kind == CART:
                carts.append(value)
            if rec.get("cart"):
                carts.append(str(rec["cart"]))
                view.links.append(("cart", str(rec["cart"])))
            if rec.get("checkout"):
                view.links.append(("checkout", str(rec["checkout"])))
    # An email-linked person who later met their customer id is that customer now.
    if user and is_email(user):
        (link,) = r.get(email_key(user))
        if link and link.get("customer_id"):
            user = _follow(r, str(link["customer_id"]))
    if user:
        pk = person_key(user)
        person, orders = r.get("person:" + pk, "orders:" + pk)
        if person is not None:
            view.records["person"] = {k: v for k, v in person.items() if k != "f"}
            anons += [str(a) for a in person.get("anons") or []]
            if person.get("cart"):
                carts.append(str(person["cart"]))
            for trait, pair in sorted((person.get("f") or {}).items()):
                if isinstance(pair, list) and len(pair) == 2:
                    shown = pair[1] if isinstance(pair[1], str) else orjson.dumps(pair[1]).decode()
                    view.traits.append((str(trait), str(pair[0] or ""), shown))
        if orders is not None:
            view.records["orders"] = orders
    for token in dict.fromkeys(carts):
        (cart,) = r.get("cart:" + token)
        if cart is not None:
            view.records.setdefault("cart:" + token, cart)
            if cart.get("anon"):
                anons.append(str(cart["anon"]))
    view.user = user
    view.anonymous = list(dict.fromkeys(anons))
    names = [n for n in (user, *merged, *view.anonymous) if n]
    hashes = list(dict.fromkeys(keyed.person_hash(n) for n in names))
    docs = [
        doc
        for entries in store.ops.ledgers(shop, hashes)
        for doc in map(_json, entries)
        if doc is not None
    ]
    view.calls = fold(docs)[:SHOWN_CALLS]
    view.found = bool(view.records or view.calls or (user and kind == CUSTOMER and view.traits))
    return view
