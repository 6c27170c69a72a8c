"""Identity, joins and suppression: one person per shopper, no recovery message after a buy.

Public surface (the processor and the backfill use these):
- `keys_for(mapped)`: the state records `decide` reads first (one MGET per batch); records
  only nameable after a lookup are found through `DecisionView.misses` in a further round.
- `decide(mapped, view, policy, triggered_at)` -> `list[Outgoing]`; `Policy`, `Outgoing`.
- `orders.index_order / index_refund / order_traits` (the per-customer order index).
- `expire_held`, `expire_refunds` (time-driven drops, injectable clock; the worker's sweep,
  worker/sweep.py, runs them).
"""

from __future__ import annotations

from bridge.canonical import Mapped, PersonRef
from bridge.identity import browse, subscriptions
from bridge.identity.carts import HELD_CHECKOUTS, conversion_guards, expire_held
from bridge.identity.decide import HELD_REFUNDS, Outgoing, decide
from bridge.identity.graph import (
    Person,
    Policy,
    anonymous_id,
    checkout_ref,
    configure_email_hash,
    email_key,
    person_key,
    resolve,
)
from bridge.identity.housekeeping import expire_refunds
from bridge.identity.view import DecisionView
from bridge.keyed import person_hash

__all__ = [
    "DecisionView",
    "Outgoing",
    "Person",
    "Policy",
    "anonymous_id",
    "configure_email_hash",
    "decide",
    "email_key",
    "expire_held",
    "expire_refunds",
    "keys_for",
    "person_hash",
    "person_key",
    "resolve",
]


def keys_for(mapped: Mapped) -> list[str]:
    """The state records `decide` reads for this webhook that its payload alone names."""
    refs = _distinct(
        [mapped.person, *(e.person for e in mapped.events), *(u.person for u in mapped.identifies)]
    )
    names: list[str] = []
    subscribing = mapped.subscription is not None or mapped.billing is not None
    for ref in refs:
        cid = ref.customer_id or ref.hinted_customer_id
        if cid:
            pk = person_key(cid)
            names += ["cust:" + cid, "person:" + pk, "orders:" + pk]
            if subscribing:
                names += [subscriptions.index_name(pk)]
        if ref.email:
            email = email_key(ref.email)
            # `person_key` of an email is its email key (worked out once here, not twice).
            pk = email if "@" in ref.email else person_key(ref.email)
            # The guest's subscription index is read whenever the email joins a customer
            # (graph.resolve merges it): naming it here spares the whole batch a second
            # decide round for one usually absent record.
            names += [
                email,
                "person:" + pk,
                "orders:" + pk,
                subscriptions.index_name(pk),
            ]
        if ref.cart_token:
            names += ["cart:" + ref.cart_token]
        # Browsers that claimed this cart or checkout (issue 17), linked once it is someone's.
        names += browse.claim_names(ref.cart_token, ref.checkout_token)
        names += conversion_guards(ref.cart_token, ref.checkout_token, ref.checkout_id)
        co = checkout_ref(ref.checkout_token, ref.checkout_id)
        if co:
            names += ["checkout:" + co, "co_drop:" + co]
        if ref.order_id:
            names += ["order:" + ref.order_id, "refund_wait:" + ref.order_id]
        if ref.subscriber:
            link = "subscriber:" + ref.subscriber
            names += [link, subscriptions.wait_name(link)]
    if subscribing:
        subs = mapped.billing.refs if mapped.billing else ()
        if mapped.subscription is not None:
            subs = (mapped.subscription.ref,)
        for ref_name in subs:
            record = subscriptions.record_name(ref_name)
            names += [record, subscriptions.wait_name(record)]
        names += [subscriptions.HELD_LINKS]
    if mapped.cart is not None or mapped.refund is not None or mapped.order is not None:
        # Shop-wide lists of held work that these webhooks may touch: loading them up front
        # saves the batch a second lookup round.
        names += [HELD_CHECKOUTS, HELD_REFUNDS]
    if mapped.browse is not None:
        names += browse.records_for(mapped.browse)
    if mapped.merge is not None:
        for cid in (mapped.merge.kept_id, mapped.merge.deleted_id):
            names += ["cust:" + cid, "person:" + person_key(cid), "orders:" + person_key(cid)]
    return list(dict.fromkeys(names))


def _distinct(refs: list[PersonRef | None]) -> list[PersonRef]:
    """The refs, each once (first seen first), None left out: a webhook's person, its events'
    and its identifies' are mostly one PersonRef (an order's are the same object), and a ref's
    names are a function of the ref alone, so a repeat would only name them again."""
    out: list[PersonRef] = []
    for ref in refs:
        if ref is None or (out and ref is out[-1]):  # (the same object again: the usual case)
            continue
        if not any(ref is seen or ref == seen for seen in out):
            out.append(ref)
    return out
