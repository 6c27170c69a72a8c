"""The stateful step: which candidate calls are sent, and under which person. Pure over a StateView.

Person resolution: the Shopify customer id when known, else the email (Customer.io then
identifies by email), else the cart's anonymous id (deterministic per shop and cart token).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass

from bridge import render
from bridge.calls import Call
from bridge.canonical import Mapped, PersonRef
from bridge.state import StateView

_ANON_NS = uuid.UUID("8b1f4a44-5c1e-4d51-9d0b-6f4f3c2a7e10")


@dataclass(frozen=True)
class Policy:
    """What the stateful step may know of the configuration."""

    shop: str
    naming: str = "snake"


def anonymous_id(shop: str, cart_token: str) -> str:
    """The same cart always gets the same anonymous id, in any process and arrival order."""
    return str(uuid.uuid5(_ANON_NS, f"{shop}\x1f{cart_token}"))


# The key of the email hash (issue 7): set once per process by `configure_email_hash`
# (Runtime.build does it from settings.email_hash_key); a keyed hash cannot be reversed by
# hashing a list of known addresses without the key.
_email_hash_key: bytes = b""


def configure_email_hash(key: bytes) -> None:
    """Set this process's email-hash key (before any batch is processed)."""
    global _email_hash_key
    _email_hash_key = key


def email_key(email: str) -> str:
    # Records keyed by email store a keyed hash of it, never the address itself.
    digest = hmac.new(_email_hash_key, email.strip().lower().encode(), hashlib.sha256)
    return "email:" + digest.hexdigest()[:32]


def keys_for(mapped: Mapped) -> list[str]:
    """The state records `decide` may read for this webhook (loaded in one round trip)."""
    refs = [
        mapped.person,
        *(e.person for e in mapped.events),
        *(u.person for u in mapped.identifies),
    ]
    names: list[str] = []
    for ref in refs:
        if ref is None:
            continue
        if ref.email:
            names.append(email_key(ref.email))
        if ref.cart_token:
            names.append("cart:" + ref.cart_token)
        if ref.order_id:
            names.append("order:" + ref.order_id)
    return names


@dataclass(frozen=True)
class Person:
    user_id: str | None
    anonymous_id: str | None

    @property
    def order_key(self) -> str:
        """Calls sharing this key keep their relative order end to end."""
        return self.user_id or self.anonymous_id or ""


def resolve(ref: PersonRef | None, view: StateView, policy: Policy) -> Person:
    """Find the person a payload speaks of, learning links (email -> id, cart -> person)."""
    if ref is None:
        return Person(None, None)
    anon = anonymous_id(policy.shop, ref.cart_token) if ref.cart_token else ref.anonymous_id
    user_id = ref.customer_id or ref.hinted_customer_id
    if ref.email:
        link = view.get(email_key(ref.email))
        if user_id:
            if not link or link.get("customer_id") != user_id:
                view.put(email_key(ref.email), {"customer_id": user_id})
        elif link and link.get("customer_id"):
            user_id = str(link["customer_id"])
        else:
            user_id = ref.email
    if ref.cart_token:
        cart = view.get("cart:" + ref.cart_token) or {}
        if user_id and cart.get("user_id") != user_id:
            view.put("cart:" + ref.cart_token, {**cart, "user_id": user_id})
        elif not user_id and cart.get("user_id"):
            user_id = str(cart["user_id"])
    if ref.order_id:
        order = view.get("order:" + ref.order_id) or {}
        if user_id and order.get("user_id") != user_id:
            view.put("order:" + ref.order_id, {**order, "user_id": user_id})
        elif not user_id and order.get("user_id"):
            user_id = str(order["user_id"])
    return Person(user_id, anon)


@dataclass(frozen=True)
class Outgoing:
    """A call to send, whose person it concerns, and the state records that would cancel it."""

    call: Call
    person: str
    guards: tuple[str, ...] = ()


def decide(mapped: Mapped, view: StateView, policy: Policy) -> list[Outgoing]:
    """Candidate calls -> calls to send, identify before the tracks that need it."""
    out: list[Outgoing] = []
    for update in mapped.identifies:
        who = resolve(update.person, view, policy)
        if who.user_id:
            call = render.identify_call(
                update, user_id=who.user_id, anonymous_id=who.anonymous_id, shop=policy.shop
            )
            out.append(Outgoing(call, who.order_key))
    for event in mapped.events:
        who = resolve(event.person, view, policy)
        if not (who.user_id or who.anonymous_id):
            continue
        for call in render.track_call(
            event,
            user_id=who.user_id,
            anonymous_id=who.anonymous_id,
            shop=policy.shop,
            naming=policy.naming,
        ):
            out.append(Outgoing(call, who.order_key))
    return out
