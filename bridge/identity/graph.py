"""The identity graph: which person a payload speaks of, and the links that find them later.

Records (names relative to the shop's state prefix, JSON objects, kept PERSON_LINK_TTL_S):
- `email:<sha256-prefix>` -> `{"customer_id"}`: a (lower-cased) email's Shopify customer.
- `cust:<id>` -> `{"merged_into"}`: a customer deleted by a completed `customers/merge`.
- `cart:<token>` -> `{"anon", "raw", "user", ...}` (cart state lives in the same record).
- `checkout:<token or id>` -> `{"cart", "user", "started", ...}`.
- `order:<id>` -> `{"user", "cart", "checkout", "checkout_id", "sent", "refunds"}`.
- `sub:<provider>:<id>` and `subscriber:<provider>:<id>` -> `{"user", ...}`: a subscription and
  a subscription app's customer (identity/subscriptions.py).

Person resolution: the Shopify customer id when known (a deleted one is followed to the kept
one), else the email (Customer.io identifies by email), else whatever person the cart,
checkout or order was linked to earlier; the anonymous id is the storefront's hint, else a
uuid5 of (shop, cart token) so the same cart gets the same id in any process and order.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bridge import keyed
from bridge.canonical import PersonRef
from bridge.identity import orders, subscriptions
from bridge.identity.browse_policy import BrowsePolicy
from bridge.identity.records import StateView
from bridge.products.record import MetafieldKeys

_ANON_NS = uuid.UUID("8b1f4a44-5c1e-4d51-9d0b-6f4f3c2a7e10")
MAX_MERGE_HOPS = 5


@dataclass(frozen=True)
class Policy:
    """What the stateful step may know of the configuration, and the batch's clock; built by
    `ProcessConfig.policy`, which holds the configured values."""

    shop: str
    naming: str
    order_completed_on: str
    checkout_contact_wait_s: int
    refund_order_wait_s: int
    unjoined_order_window_s: int
    now: datetime | None = None
    browse: BrowsePolicy | None = None  # storefront browse events (issue 17); None: defaults
    # The store's replenishment metafields (issue 17; products/record.py).
    metafields: MetafieldKeys = field(default_factory=MetafieldKeys)

    def clock(self) -> datetime:
        return self.now or datetime.now(UTC)


_ANON_NS_BYTES = _ANON_NS.bytes


def anonymous_id(shop: str, cart_token: str) -> str:
    """The same cart always gets the same anonymous id, in any process and arrival order.

    `uuid.uuid5(_ANON_NS, f"{shop}\\x1f{cart_token}")` as text, worked out without building
    the UUID objects (once for every order and cart): the SHA-1 of namespace and name, its
    version and variant bits set (RFC 4122, 4.3)."""
    name = _ANON_NS_BYTES + f"{shop}\x1f{cart_token}".encode()
    raw = bytearray(hashlib.sha1(name, usedforsecurity=False).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def configure_email_hash(key: bytes) -> None:
    """Set this process's identity hash key (issue 7; Services.build does it from
    settings.email_hash_key): it keys email record names and delivery's person names alike."""
    keyed.configure(key)


def email_key(email: str) -> str:
    # Records keyed by email store a keyed hash of it, never the address itself.
    return "email:" + keyed.email_digest(email)


def is_email(user_id: str) -> bool:
    return "@" in user_id


def person_key(user_id: str) -> str:
    """The suffix of a person's records (`person:`, `orders:`): customer id or email hash."""
    # `is_email` inlined: this runs ~12 times for every order.
    return email_key(user_id) if "@" in user_id else "cust:" + user_id


def checkout_ref(token: str | None, checkout_id: str | None) -> str | None:
    return token or checkout_id


def follow(view: StateView, customer_id: str | None) -> str | None:
    """A customer id, or the id it was merged into (merges are followed a few hops)."""
    cid = customer_id
    for _ in range(MAX_MERGE_HOPS):
        if not cid:
            return cid
        rec = view.get("cust:" + cid)
        kept = rec.get("merged_into") if rec else None
        if not kept or kept == cid:
            return cid
        cid = str(kept)
    return cid


@dataclass(frozen=True)
class Person:
    user_id: str | None
    anonymous_id: str | None

    @property
    def order_key(self) -> str:
        """Calls sharing this key keep their relative order end to end."""
        return self.user_id or self.anonymous_id or ""


def _better(stored: str | None, new: str) -> bool:
    # A link is set once and only upgraded from an email to a customer id.
    return stored is None or (stored != new and is_email(stored) and not is_email(new))


def _link(view: StateView, name: str, user: str) -> None:
    rec = view.get(name) or {}
    if _better(rec.get("user"), user):
        view.put(name, {**rec, "user": user})


def _linked_user(view: StateView, *names: str) -> str | None:
    for name in names:
        rec = view.get(name)
        user = rec.get("user") if rec else None
        if user:
            user = str(user)
            if not is_email(user):
                return follow(view, user)
            # Linked while only the email was known: the email may have met its customer id
            # since (its email record says so), and the person is that customer now.
            link = view.get(email_key(user)) or {}
            cid = link.get("customer_id")
            return follow(view, str(cid)) if cid else user
    return None


def linked_user(view: StateView, *names: str) -> str | None:
    """The person the first of these records (cart, checkout, order...) is linked to, emails
    followed to their customer and merges followed; None when none is linked."""
    return _linked_user(view, *names)


def resolve(ref: PersonRef | None, view: StateView, policy: Policy) -> Person:
    """Find the person a payload speaks of, learning links (email -> id, cart/order -> person).

    When a customer id and an email meet for the first time, the guest's order index (kept
    under the email) joins the customer's, so their earlier orders count once.
    """
    if ref is None:
        return Person(None, None)
    cart_name = "cart:" + ref.cart_token if ref.cart_token else None
    cart = (view.get(cart_name) if cart_name else None) or {}
    anon = ref.anonymous_id or cart.get("anon")
    if anon is None and ref.cart_token:
        anon = anonymous_id(policy.shop, ref.cart_token)
    if cart_name and (cart.get("anon") != anon or (ref.cart_token_raw and "raw" not in cart)):
        view.put(cart_name, {**cart, "anon": anon, "raw": ref.cart_token_raw})
    cid = follow(view, ref.customer_id or ref.hinted_customer_id)
    if ref.email:
        name = email_key(ref.email)
        link = view.get(name) or {}
        if cid:
            if link.get("customer_id") != cid:
                view.put(name, {"customer_id": cid})
                guest, customer = person_key(ref.email), person_key(cid)
                orders.merge_index(view, guest, customer)
                subscriptions.merge_index(view, guest, customer)
        elif link.get("customer_id"):
            cid = follow(view, str(link["customer_id"]))
    user = cid or ref.email
    co = checkout_ref(ref.checkout_token, ref.checkout_id)
    names = [n for n in (cart_name, "checkout:" + co if co else None) if n]
    if ref.order_id:
        names.append("order:" + ref.order_id)
    if ref.subscription:
        names.append(subscriptions.record_name(ref.subscription))
    if ref.subscriber:
        names.append("subscriber:" + ref.subscriber)
    if user is None:
        user = _linked_user(view, *names)
    if user is not None:
        for n in names:
            _link(view, n, user)
    return Person(user, anon)
