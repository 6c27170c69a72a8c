"""The stateful step: which candidate calls are sent, under which person, guarded by what.

Contract: `decide` is a pure function of (mapped webhook, StateView, Policy); it reads and
writes state records only through the view, reports what it suppressed, held or dropped as
counters on a DecisionView, and returns identifies first, then tracks, then (for a completed
customers/merge) the alias, so per-person order puts an identify before what needs it.
Once-only rules: `checkout_started` once per checkout, each order event once per order id,
`order_refunded` once per refund id, the alias once per merged-away customer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bridge.canonical import (
    ADDED_TO_CART,
    BILLING_FAILURE,
    BILLING_SKIPPED,
    BILLING_SUCCESS,
    BILLING_UNSKIPPED,
    CHECKOUT_STARTED,
    ORDER_REFUNDED,
    PAYMENT_FAILED,
    PAYMENT_RECOVERED,
    SUB_ACTIVE,
    SUB_CANCELED,
    SUB_EXPIRED,
    SUB_PAUSED,
    SUBSCRIPTION_CANCELED,
    SUBSCRIPTION_CREATED,
    SUBSCRIPTION_EXPIRED,
    SUBSCRIPTION_PAUSED,
    SUBSCRIPTION_RESUMED,
    SUBSCRIPTION_SKIPPED,
    BillingFact,
    CanonicalEvent,
    Mapped,
    PersonRef,
    RefundFact,
    SubscriptionFact,
)
from bridge.delivery import render
from bridge.delivery.calls import Call
from bridge.identity import browse, carts, orders, replenishment, subscriptions
from bridge.identity.graph import (
    Person,
    Policy,
    checkout_ref,
    follow,
    is_email,
    person_key,
    resolve,
)
from bridge.identity.records import StateView
from bridge.identity.traits import LIVE_CART_TRAITS, Identities, person_name
from bridge.identity.view import count, note
from bridge.ids import iso_z, message_id
from bridge.products import cache as product_cache

HELD_REFUNDS = "held:refunds"
# Why a call is held back once its cart or checkout became an order (the ops console shows it).
_CONVERTED = "the cart or checkout was already converted to an order"
# Facts released by a webhook are decided in its run; a released fact releasing more is
# followed this deep (a subscriber's customer -> its subscriptions -> their billing facts).
MAX_RELEASE_DEPTH = 3
# The event a subscription's status change sends (to `active`: only when it was stopped).
_STATUS_EVENTS = {
    SUB_PAUSED: SUBSCRIPTION_PAUSED,
    SUB_CANCELED: SUBSCRIPTION_CANCELED,
    SUB_EXPIRED: SUBSCRIPTION_EXPIRED,
}
_RESUMED_FROM = (SUB_PAUSED, SUB_CANCELED, SUB_EXPIRED)


@dataclass(frozen=True)
class Outgoing:
    """A call to send, whose person it concerns, and the state records that would cancel it.

    `kind` is "alias" for a call that must go to /v1/alias on its own, "batch" otherwise.
    """

    call: Call
    person: str
    guards: tuple[str, ...] = ()
    kind: str = "batch"


class _Run:
    """One webhook's decision: collects identifies, tracks and trailing calls."""

    def __init__(self, view: StateView, policy: Policy, triggered_at: datetime | None) -> None:
        self.view = view
        self.policy = policy
        self.triggered_at = triggered_at
        self.ids = Identities()
        self.tracks: list[Outgoing] = []
        self.after: list[Outgoing] = []
        self.links: list[Outgoing] = []  # identifies joining browsers to people (issue 17)
        self.depth = 0
        # The last person resolved: (ref, view revision, person). An order's identify and its
        # events name the same person (one PersonRef) with no write between them.
        self._resolved: tuple[PersonRef | None, int, Person] | None = None

    def resolve(self, ref: PersonRef | None) -> Person:
        """`graph.resolve`, once per person while the view is unchanged: resolving is
        idempotent (a second resolve of the same ref over the records the first left reads
        the same records, finds the same person and writes nothing), so a ref resolved again
        at the same revision gets the same person without the work."""
        last = self._resolved
        fresh = last is not None and last[1] == self.view.revision
        if last is not None and fresh and (last[0] is ref or last[0] == ref):
            return last[2]
        who = resolve(ref, self.view, self.policy)
        self._resolved = (ref, self.view.revision, who)
        return who

    # --- helpers ---------------------------------------------------------------------------
    def track(
        self,
        event: CanonicalEvent,
        who: Person,
        guards: tuple[str, ...] = (),
        stable_id: tuple[datetime, str] | None = None,
    ) -> None:
        for call in render.track_call(
            event,
            user_id=who.user_id,
            anonymous_id=who.anonymous_id,
            shop=self.policy.shop,
            naming=self.policy.naming,
            stable_id=stable_id,
        ):
            self.tracks.append(Outgoing(call, who.order_key, guards))

    def order_traits(self, who: Person, at: datetime, *, replenish: bool = False) -> None:
        if who.user_id:
            person = person_key(who.user_id)
            traits = orders.order_traits(self.view, person)
            if replenish and traits:  # issue 17: on orders, refunds, and products arriving
                index = orders.index_name(person)
                policy = self.policy
                traits.update(
                    replenishment.traits(self.view, index, policy.metafields, policy.clock())
                )
                waiting = replenishment.waiting_products(self.view, index)
                if waiting and not is_email(who.user_id):
                    product_cache.wait_for(self.view, waiting, who.user_id)
            if traits:
                self.ids.computed(who.user_id, traits, at, who.anonymous_id)

    def live_cart(self, who: Person, cart_token: str | None, at: datetime) -> None:
        if not (who.user_id and cart_token):
            return
        traits = carts.live_traits(self.view, cart_token)
        if not traits:
            return
        self.ids.computed(who.user_id, traits, at, who.anonymous_id)
        name = person_name(who.user_id)
        rec = self.view.get(name) or {}
        if rec.get("cart") != cart_token:
            self.view.put(name, {**rec, "cart": cart_token})

    def outgoing(self) -> list[Outgoing]:
        out = [Outgoing(call, user) for user, call in self.ids.render(self.view, self.policy)]
        return out + self.links + self.tracks + self.after

    # --- storefront browse events (issue 17, identity/browse.py) ---------------------------
    def browse(self, mapped: Mapped) -> None:
        for call, person in browse.decide_browse(mapped, self.view, self.policy, self.ids):
            target = self.links if call["type"] == "identify" else self.tracks
            target.append(Outgoing(call, person))

    def link_browsers(self, mapped: Mapped) -> None:
        refs = [mapped.person, *(e.person for e in mapped.events)]
        for call, person in browse.link_claimants(refs, self.view, self.policy):
            self.links.append(Outgoing(call, person))

    # --- identifies ------------------------------------------------------------------------
    def trait_updates(self, mapped: Mapped) -> None:
        for update in mapped.identifies:
            who = self.resolve(update.person)
            if not who.user_id:
                continue
            version = update.version or self.triggered_at or update.timestamp
            self.ids.versioned(
                who.user_id, update.traits, version, update.timestamp, who.anonymous_id
            )
            self.order_traits(who, update.timestamp)

    # --- carts -----------------------------------------------------------------------------
    def cart(self, mapped: Mapped) -> None:
        snap = mapped.cart
        if snap is None:
            return
        who = self.resolve(mapped.person)
        name = "cart:" + snap.cart_token
        rec = self.view.get(name) or {}
        at = iso_z(snap.updated_at)
        if rec.get("at") and at <= str(rec["at"]):
            count(self.view, "events:added_to_cart:stale")
            return
        lines, added = carts.additions(dict(rec.get("lines") or {}), snap.items)
        self.view.put(name, {**rec, "at": at, "lines": lines})
        guards = carts.conversion_guards(snap.cart_token, None, None)
        if carts.converted(self.view, guards):
            if added:
                count(self.view, "events:added_to_cart:suppressed", len(added))
                note(self.view, who.order_key, ADDED_TO_CART, "suppressed", _CONVERTED, len(added))
            return
        carts.update_live(self.view, snap, from_checkout=False)
        self.live_cart(who, snap.cart_token, snap.updated_at)
        if not added:
            return
        base = mapped.events[0] if mapped.events else None
        props = render.to_json(base.properties) if base else {"cart_id": snap.cart_token}
        # The ids' time is the cart's creation, not the update's: the same addition then gets
        # the same id whichever snapshot revealed it first.
        stable_at = snap.created_at or snap.updated_at
        shop, token = self.policy.shop, snap.cart_token
        ids = [
            (
                message_id(stable_at, render.SOURCE, shop, ADDED_TO_CART, f"cart:{token}:{k}:{n}"),
                item,
            )
            for k, n, item in added
        ]
        calls = render.added_to_cart_calls(
            ids,
            at=snap.updated_at,
            properties=props,
            user_id=who.user_id,
            anonymous_id=who.anonymous_id,
            naming=self.policy.naming,
        )
        self.tracks.extend(Outgoing(call, who.order_key, guards) for call in calls)

    # --- checkouts -------------------------------------------------------------------------
    def checkout(self, mapped: Mapped) -> None:
        ref = mapped.person
        if ref is None:
            return
        co = checkout_ref(ref.checkout_token, ref.checkout_id)
        if co is None:
            return
        who = self.resolve(ref)
        name = "checkout:" + co
        rec = self.view.get(name) or {}
        if ref.cart_token and rec.get("cart") != ref.cart_token:
            rec = {**rec, "cart": ref.cart_token}
            self.view.put(name, rec)
        guards = carts.conversion_guards(ref.cart_token, ref.checkout_token, ref.checkout_id)
        is_converted = carts.converted(self.view, guards)
        if mapped.cart is not None and not is_converted:
            carts.update_live(self.view, mapped.cart, from_checkout=True)
            self.live_cart(who, mapped.cart.cart_token, mapped.cart.updated_at)
        for event in mapped.events:
            if event.name != CHECKOUT_STARTED:
                self.track(event, who)
                continue
            if rec.get("started"):
                count(self.view, "events:checkout_started:duplicate")
            elif is_converted:
                count(self.view, "events:checkout_started:suppressed")
                note(self.view, who.order_key, CHECKOUT_STARTED, "suppressed", _CONVERTED)
                self._unhold(name, rec, co)
            elif self.view.get("co_drop:" + co) is not None:
                count(self.view, "events:checkout_started:late_contact_dropped")
                note(
                    self.view,
                    who.order_key,
                    CHECKOUT_STARTED,
                    "suppressed",
                    "the checkout had waited too long for a contact and was dropped",
                )
            elif self._recent_unjoined_order(who, event.timestamp):
                count(self.view, "events:checkout_started:suppressed")
                note(
                    self.view,
                    who.order_key,
                    CHECKOUT_STARTED,
                    "suppressed",
                    "the person ordered within the unjoined-order window",
                )
                self._unhold(name, rec, co)
            elif not who.user_id:
                if not rec.get("held"):
                    rec = {**rec, "held": iso_z(self.policy.clock())}
                    self.view.put(name, rec)
                    carts.hold_checkout(self.view, co, self.policy.clock())
                    count(self.view, "events:checkout_started:held")
                    note(
                        self.view,
                        who.order_key,
                        CHECKOUT_STARTED,
                        "waiting",
                        "held until the checkout has a contact",
                    )
            else:
                self.track(event, who, guards)
                self._unhold(name, rec, co)
                rec = {k: v for k, v in rec.items() if k != "held"}
                self.view.put(name, {**rec, "started": True})

    def _unhold(self, name: str, rec: dict[str, Any], co: str) -> None:
        if rec.get("held"):
            carts.release_checkout(self.view, co)
            self.view.put(name, {k: v for k, v in rec.items() if k != "held"})

    def _recent_unjoined_order(self, who: Person, at: datetime) -> bool:
        if not who.user_id:
            return False
        rec = self.view.get(person_name(who.user_id)) or {}
        last = rec.get("unjoined_at")
        if not last:
            return False
        window = timedelta(seconds=self.policy.unjoined_order_window_s)
        return abs(datetime.fromisoformat(str(last)) - at) <= window

    # --- orders ----------------------------------------------------------------------------
    def order(self, mapped: Mapped) -> None:
        fact = mapped.order
        ref = mapped.person
        if fact is None or ref is None:
            return
        who = self.resolve(ref)
        name = "order:" + fact.order_id
        rec = dict(self.view.get(name) or {})
        rec.update(
            {
                k: v
                for k, v in (
                    ("cart", ref.cart_token),
                    ("checkout", ref.checkout_token),
                    ("checkout_id", ref.checkout_id),
                    ("anon", who.anonymous_id),
                )
                if v
            }
        )
        guards = carts.conversion_guards(ref.cart_token, ref.checkout_token, ref.checkout_id)
        # A billing success naming this order (seen first) makes it a renewal whatever its
        # lines say (webhooks before API 2026-10 carry no selling plan).
        renewal_of = rec.get("subscription")
        if renewal_of and not fact.renewal:
            fact = fact.model_copy(update={"renewal": True})
        if not fact.test:
            carts.convert(self.view, guards, fact.order_id)
            if not fact.renewal:
                # A renewal was billed, not bought: the person's live cart and any checkout they
                # have open are still theirs to finish, and their reminders still go out.
                self._clear_live_cart(who, ref.cart_token, fact.created_at)
            if who.user_id:
                pk = person_key(who.user_id)
                if orders.index_order(self.view, pk, fact) or replenishment.unresolved(
                    self.view, orders.index_name(pk)
                ):
                    self.order_traits(who, fact.created_at, replenish=True)
                if not guards and not fact.renewal:
                    self._mark_unjoined(who.user_id, fact.created_at, fact.order_id)
        sent = list(rec.get("sent") or [])
        for event in mapped.events:
            if event.name in sent:
                count(self.view, f"events:{event.name}:duplicate")
            elif not (who.user_id or who.anonymous_id):
                count(self.view, f"events:{event.name}:no_person")
            else:
                if fact.renewal and renewal_of:
                    props = {**event.properties, "subscription_renewal": True}
                    props["subscription_id"] = str(renewal_of).partition(":")[2]
                    event = event.model_copy(update={"properties": props})
                self.track(event, who)
                sent.append(event.name)
        rec["sent"] = sent
        self.view.put(name, rec)
        self._release_refunds(fact.order_id)

    def _clear_live_cart(self, who: Person, cart_token: str | None, at: datetime) -> None:
        if not who.user_id:
            return
        rec = self.view.get(person_name(who.user_id)) or {}
        if rec.get("cart") and (cart_token is None or rec.get("cart") == cart_token):
            self.ids.computed(who.user_id, dict.fromkeys(LIVE_CART_TRAITS), at, who.anonymous_id)
            rec = self.view.get(person_name(who.user_id)) or {}
            self.view.put(person_name(who.user_id), {k: v for k, v in rec.items() if k != "cart"})

    def _mark_unjoined(self, user: str, at: datetime, order_id: str) -> None:
        name = person_name(user)
        rec = self.view.get(name) or {}
        if str(rec.get("unjoined_at") or "") < iso_z(at):
            self.view.put(name, {**rec, "unjoined_at": iso_z(at), "unjoined_order": order_id})

    def _unmark_unjoined(self, user: str, order_id: str) -> None:
        """An order found to be a renewal after it was decided: it no longer speaks for a
        checkout the person has open."""
        name = person_name(user)
        rec = self.view.get(name) or {}
        if rec.get("unjoined_order") == order_id:
            drop = ("unjoined_at", "unjoined_order")
            self.view.put(name, {k: v for k, v in rec.items() if k not in drop})
            count(self.view, "subscriptions:renewal:found_late")

    # --- refunds ---------------------------------------------------------------------------
    def refund(self, mapped: Mapped) -> None:
        fact = mapped.refund
        if fact is None:
            return
        event = next((e for e in mapped.events if e.name == ORDER_REFUNDED), None)
        order = self.view.get("order:" + fact.order_id)
        if order is None or not (order.get("user") or order.get("anon")):
            self._hold_refund(fact, event)
            return
        self._send_refund(order, fact, event)

    def _send_refund(
        self, order: dict[str, Any], fact: RefundFact, event: CanonicalEvent | None
    ) -> None:
        name = "order:" + fact.order_id
        done = list(order.get("refunds") or [])
        # Refunds recorded without their event (an identify-only backfill): a later events
        # run still sends `order_refunded` for them, once.
        silent = list(order.get("refunds_silent") or [])
        user = order.get("user")
        user = str(user) if user else None
        if user and "@" not in user:
            user = follow(self.view, user)
        who = Person(user, order.get("anon"))
        if fact.refund_id in done:
            if event is None or fact.refund_id not in silent:
                count(self.view, "events:order_refunded:duplicate")
                return
            self.track(event, who)
            rest = [r for r in silent if r != fact.refund_id]
            self.view.put(name, {**order, "refunds_silent": rest})
            return
        if event is not None:
            self.track(event, who)
        else:
            silent.append(fact.refund_id)
        if who.user_id and orders.index_refund(self.view, person_key(who.user_id), fact):
            self.order_traits(who, fact.created_at, replenish=True)
        record = {**order, "refunds": [*done, fact.refund_id]}
        if silent:
            record["refunds_silent"] = silent
        self.view.put(name, record)

    def _hold_refund(self, fact: RefundFact, event: CanonicalEvent | None) -> None:
        name = "refund_wait:" + fact.order_id
        rec = dict(self.view.get(name) or {})
        if fact.refund_id in rec:
            count(self.view, "events:order_refunded:duplicate")
            return
        since = iso_z(self.policy.clock())
        rec[fact.refund_id] = {
            "since": since,
            "fact": fact.model_dump(mode="json"),
            "event": event.model_dump(mode="json") if event else None,
        }
        self.view.put(name, rec)
        idx = self.view.get(HELD_REFUNDS) or {}
        entries = dict(idx.get("e") or {})
        entries[f"{fact.order_id}/{fact.refund_id}"] = since
        self.view.put(HELD_REFUNDS, {"e": entries})
        count(self.view, "events:order_refunded:held")

    def _release_refunds(self, order_id: str) -> None:
        name = "refund_wait:" + order_id
        waiting = self.view.get(name)
        if not waiting:
            return
        order = self.view.get("order:" + order_id) or {}
        if not (order.get("user") or order.get("anon")):
            return
        idx = self.view.get(HELD_REFUNDS) or {}
        entries = dict(idx.get("e") or {})
        for refund_id, held in sorted(waiting.items()):
            fact = RefundFact.model_validate(held["fact"])
            event = CanonicalEvent.model_validate(held["event"]) if held.get("event") else None
            self._send_refund(self.view.get("order:" + order_id) or order, fact, event)
            entries.pop(f"{order_id}/{refund_id}", None)
            count(self.view, "events:order_refunded:released")
        self.view.delete(name)
        if entries:
            self.view.put(HELD_REFUNDS, {"e": entries})
        else:
            self.view.delete(HELD_REFUNDS)

    # --- subscriptions ---------------------------------------------------------------------
    def subscription_traits(self, who: Person, at: datetime) -> None:
        if who.user_id:
            traits = subscriptions.subscription_traits(
                self.view, person_key(who.user_id), self.policy.clock()
            )
            if traits:
                self.ids.computed(who.user_id, traits, at, who.anonymous_id)

    def _silent(self, mapped: Mapped) -> bool:
        # History the backfill queues (and Admin lookups) gives state and traits, not events.
        return mapped.topic.startswith("backfill/")

    def _wait(self, mapped: Mapped, ref: PersonRef, what: str) -> None:
        """Hold a fact until the subscription or subscriber it names finds its person."""
        if ref.subscription:
            name = subscriptions.record_name(ref.subscription)
        elif ref.subscriber:
            name = "subscriber:" + ref.subscriber
        else:
            count(self.view, f"subscriptions:{what}:no_person")
            return
        if subscriptions.hold(self.view, name, mapped, self.policy.clock()):
            count(self.view, f"subscriptions:{what}:held")
        else:
            raise ValueError(f"too many facts already wait for {name.partition(':')[0]}")

    def release(self, names: list[str]) -> None:
        """Decide now the facts that waited for one of these records to name a person."""
        if self.depth >= MAX_RELEASE_DEPTH:
            return
        self.depth += 1
        try:
            for name in names:
                if not (self.view.get(name) or {}).get("user"):
                    continue
                for held in subscriptions.take_held(self.view, name):
                    count(self.view, "subscriptions:held:released")
                    if held.subscription is not None:
                        self.subscription(held)
                    elif held.billing is not None:
                        self.billing(held)
        finally:
            self.depth -= 1

    def _subscription_event(
        self,
        name: str,
        ref: str,
        rec: dict[str, Any],
        at: datetime,
        who: Person,
        key: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        props = dict(rec.get("props") or {})
        items = props.pop("items", None) or []
        provider, _, sub_id = ref.partition(":")
        props.update({"subscription_id": sub_id or None, "provider": provider, **(extra or {})})
        if len(items) == 1:
            # One product: its ids at the top level too, where segment filters look first.
            for field in ("product_id", "variant_id", "sku"):
                if items[0].get(field) is not None:
                    props.setdefault(field, items[0][field])
        event = CanonicalEvent(
            name=name,
            timestamp=at,
            key=f"sub:{ref}:{key}",
            person=PersonRef(),
            properties={k: v for k, v in props.items() if v is not None},
            items=tuple(items),
        )
        self.track(event, who)

    def subscription(self, mapped: Mapped) -> None:
        fact = mapped.subscription
        if fact is None:
            return
        ref = fact.person.model_copy(update={"subscription": fact.ref})
        who = self.resolve(ref)
        if not who.user_id:
            # Recharge's subscription names only Recharge's customer: wait for that customer.
            self._wait(mapped, fact.person, "subscription")
            return
        pk = person_key(who.user_id)
        name = subscriptions.record_name(fact.ref)
        rec = dict(self.view.get(name) or {})
        entries = subscriptions.index(self.view, pk)
        # The order that started it: the fact's, else what a first charge taught the record.
        origin = fact.origin_order_id or rec.get("oo")
        before = subscriptions.group_status(entries, fact.ref, origin)
        version = iso_z(fact.version)
        newer = subscriptions.is_newer(rec, fact.revision, version)
        rec = _with_fact(rec, fact, newer)
        if newer:
            rec.update({"v": version, "rev": fact.revision})
            if fact.status is not None:
                rec["st"] = fact.status
                if fact.status != SUB_ACTIVE:
                    # Dunning is a state of a billing subscription; a stopped one owes nothing.
                    rec.pop("dun", None)
                    rec.pop("fails", None)
                if fact.status != SUB_CANCELED:
                    rec.pop("reason", None)  # a reactivated subscription's old reason is stale
        else:
            count(self.view, "subscriptions:snapshot:stale")
        sent = list(rec.get("sent") or [])
        silent = self._silent(mapped)
        if fact.created and "created" not in sent:
            sent.append("created")
            if silent:
                pass
            elif subscriptions.has_twin(entries, fact.ref, origin):
                count(self.view, f"events:{SUBSCRIPTION_CREATED}:duplicate")
            else:
                at = fact.created_at or fact.version
                self._subscription_event(SUBSCRIPTION_CREATED, fact.ref, rec, at, who, "created")
        rec["sent"] = sent
        self.view.put(name, rec)
        subscriptions.put_index(self.view, pk, fact.ref, rec)
        after = subscriptions.group_status(subscriptions.index(self.view, pk), fact.ref, origin)
        if newer and after != before and not silent:
            self._status_event(fact, rec, before, after, who)
        self.subscription_traits(who, fact.version)
        self.release(
            [name] + (["subscriber:" + fact.person.subscriber] if fact.person.subscriber else [])
        )

    def _status_event(
        self,
        fact: SubscriptionFact,
        rec: dict[str, Any],
        before: str | None,
        after: str | None,
        who: Person,
    ) -> None:
        event = _STATUS_EVENTS.get(after or "")
        if event is None and after == SUB_ACTIVE and before in _RESUMED_FROM:
            event = SUBSCRIPTION_RESUMED
        if event is None:
            return  # first seen active (subscription_created says it), or now in dunning
        extra: dict[str, Any] = {"status": after}
        at = fact.version
        if event == SUBSCRIPTION_CANCELED:
            extra["cancellation_reason"] = rec.get("reason")
            at = fact.canceled_at or fact.version
        self._subscription_event(
            event, fact.ref, rec, at, who, f"{event}:{iso_z(fact.version)}", extra
        )

    def billing(self, mapped: Mapped) -> None:
        fact = mapped.billing
        if fact is None:
            return
        refs = fact.refs
        own = fact.person
        names_person = bool(own.customer_id or own.email or own.subscriber)
        ref = (
            own
            if names_person
            else own.model_copy(update={"subscription": refs[0] if refs else None})
        )
        who = self.resolve(ref)
        if not who.user_id:
            self._wait(mapped, ref, "billing")
            return
        pk = person_key(who.user_id)
        silent = self._silent(mapped)
        changed = False
        records: list[tuple[str, dict[str, Any]]] = []
        for sub_ref in refs:
            name = subscriptions.record_name(sub_ref)
            rec = dict(self.view.get(name) or {})
            if not rec.get("user"):
                rec["user"] = who.user_id  # a Recharge charge links its subscriptions
            records.append((sub_ref, rec))
        if fact.outcome == BILLING_FAILURE:
            self._failure(fact, records, who, silent)
        elif fact.outcome == BILLING_SUCCESS:
            self._success(fact, records, who, silent)
        elif fact.outcome in (BILLING_SKIPPED, BILLING_UNSKIPPED):
            self._skip(fact, records, who, silent)
        else:
            count(self.view, f"subscriptions:billing:{fact.outcome}")
        for sub_ref, rec in records:
            self.view.put(subscriptions.record_name(sub_ref), rec)
            changed = subscriptions.put_index(self.view, pk, sub_ref, rec) or changed
        if changed:
            self.subscription_traits(who, fact.at)
        self.release([subscriptions.record_name(r) for r in refs])

    def _billing_props(self, fact: BillingFact) -> dict[str, Any]:
        return {
            "error_code": fact.error_code,
            "error_message": fact.error_message,
            "amount": fact.amount,
            "currency": fact.currency,
            "next_retry_at": fact.next_retry_at,
            "order_id": fact.order_id,
            "subscription_ids": list(fact.subscription_ids)
            if len(fact.subscription_ids) > 1
            else None,
        }

    def _failure(
        self,
        fact: BillingFact,
        records: list[tuple[str, dict[str, Any]]],
        who: Person,
        silent: bool,
    ) -> None:
        at = iso_z(fact.at)
        cycle = fact.cycle or "open"
        attempt = 0
        fresh = False
        for _, rec in records:
            if str(rec.get("ok") or "") >= at:
                continue  # older than a success already recorded: that cycle was recovered
            fails = dict(rec.get("fails") or {})
            entry = dict(fails.get(cycle) or {"n": 0, "ids": []})
            if fact.attempt_id in entry["ids"]:
                attempt = max(attempt, int(entry["n"]))
                continue
            entry["n"] = int(entry["n"]) + 1
            entry["ids"] = [*entry["ids"], fact.attempt_id][-subscriptions.MAX_ATTEMPT_IDS :]
            entry["at"] = max(str(entry.get("at") or ""), at)
            fails[cycle] = entry
            # Bounded: the oldest open cycles go first (a success closes them anyway).
            newest = sorted(fails, key=lambda c: str(fails[c].get("at") or ""))
            rec["fails"] = {c: fails[c] for c in newest[-subscriptions.MAX_OPEN_CYCLES :]}
            rec["dun"] = True
            attempt = max(attempt, int(entry["n"]))
            fresh = True
        if records and not fresh:
            stale = all(str(rec.get("ok") or "") >= at for _, rec in records)
            count(self.view, f"events:{PAYMENT_FAILED}:{'stale' if stale else 'duplicate'}")
            return
        if silent:
            return
        first_ref = records[0][0] if records else f"{fact.provider}:"
        first_rec = records[0][1] if records else {}
        extra = {
            **self._billing_props(fact),
            "attempt_number": fact.attempt_number or attempt or None,
        }
        extra["status"] = subscriptions.DUNNING
        self._subscription_event(
            PAYMENT_FAILED, first_ref, first_rec, fact.at, who, f"failed:{fact.attempt_id}", extra
        )

    def _success(
        self,
        fact: BillingFact,
        records: list[tuple[str, dict[str, Any]]],
        who: Person,
        silent: bool,
    ) -> None:
        at = iso_z(fact.at)
        recovered = 0
        for sub_ref, rec in records:
            fails = dict(rec.get("fails") or {})
            mine = [c for c in fails if not fact.cycle or c == fact.cycle or c == "open"]
            for c in mine:
                recovered = max(recovered, int(fails.pop(c).get("n") or 0))
            # A later cycle was paid: an older one still failing was given up on (Recharge
            # moves on to the next charge), and must not keep the subscription in dunning.
            for c in [c for c in fails if str(fails[c].get("at") or "") <= at]:
                del fails[c]
            rec["fails"] = fails
            if not fails:
                rec.pop("dun", None)
            if str(rec.get("ok") or "") < at:
                rec["ok"] = at
            if fact.first_order and fact.order_id and not rec.get("oo"):
                rec["oo"] = fact.order_id
            if fact.order_id and not fact.first_order:
                # The renewal order this success created: its order_completed names the
                # subscription, and it converts no cart (see `order`).
                order_name = "order:" + fact.order_id
                order = self.view.get(order_name) or {}
                if not order.get("subscription"):
                    self.view.put(order_name, {**order, "subscription": sub_ref})
                if order.get("sent") and who.user_id:
                    # The order came first and was decided as a purchase (webhooks before API
                    # 2026-10 carry no selling plan): lift its hold on an open checkout.
                    self._unmark_unjoined(who.user_id, fact.order_id)
        if not recovered or silent:
            return
        extra = {**self._billing_props(fact), "failed_attempts": recovered, "status": SUB_ACTIVE}
        first_ref, first_rec = records[0]
        self._subscription_event(
            PAYMENT_RECOVERED,
            first_ref,
            first_rec,
            fact.at,
            who,
            f"recovered:{fact.attempt_id}",
            extra,
        )

    def _skip(
        self,
        fact: BillingFact,
        records: list[tuple[str, dict[str, Any]]],
        who: Person,
        silent: bool,
    ) -> None:
        cycle = fact.cycle or fact.attempt_id
        for sub_ref, rec in records:
            skips = list(rec.get("skips") or [])
            if fact.outcome == BILLING_UNSKIPPED:
                if cycle in skips:
                    rec["skips"] = [c for c in skips if c != cycle]
                count(self.view, "subscriptions:cycle:unskipped")
                continue
            if cycle in skips:
                count(self.view, f"events:{SUBSCRIPTION_SKIPPED}:duplicate")
                continue
            rec["skips"] = [*skips, cycle][-subscriptions.MAX_SKIPS :]
            if not silent:
                self._subscription_event(
                    SUBSCRIPTION_SKIPPED,
                    sub_ref,
                    rec,
                    fact.at,
                    who,
                    f"skip:{cycle}",
                    {"cycle": fact.cycle or None},
                )

    # --- products (issue 17) ----------------------------------------------------------------
    def product(self, mapped: Mapped) -> None:
        """A product the cache now holds: the customers whose replenishment date waited for it
        get it recomputed (the processor wrote the product before deciding)."""
        fact = mapped.product
        if fact is None:
            return
        at = self.triggered_at or self.policy.clock()
        for customer_id in product_cache.take_waiting(self.view, fact.product_id):
            user = follow(self.view, customer_id)
            if user:
                self.order_traits(Person(user, None), at, replenish=True)

    # --- customers/merge -------------------------------------------------------------------
    def merge(self, mapped: Mapped) -> None:
        fact = mapped.merge
        if fact is None:
            return
        if not fact.completed:
            count(self.view, "merges:failed_ignored")
            return
        deleted = fact.deleted_id
        kept = follow(self.view, fact.kept_id) or fact.kept_id
        if deleted == kept:
            return
        name = "cust:" + deleted
        if (self.view.get(name) or {}).get("merged_into"):
            count(self.view, "merges:duplicate")
            return
        self.view.put(name, {"merged_into": kept})
        at = self.triggered_at or self.policy.clock()
        orders.merge_index(self.view, person_key(deleted), person_key(kept))
        subscriptions.merge_index(self.view, person_key(deleted), person_key(kept))
        who = Person(kept, None)
        self.order_traits(who, at)
        self.subscription_traits(who, at)
        # The kept profile must exist before the alias: an identify goes first, and delivery
        # sends the alias alone only after everything queued before it was accepted.
        self.ids.touch(kept, at, None, force=True)
        call = render.alias_call(deleted, kept, at, self.policy.shop)
        self.after.append(Outgoing(call, kept, kind="alias"))
        count(self.view, "merges:completed")


def _with_fact(rec: dict[str, Any], fact: SubscriptionFact, newer: bool) -> dict[str, Any]:
    """A subscription record with what this snapshot says: everything when it is the newer
    one, else only what the record does not know yet (an older create still gives the start)."""
    props = dict(rec.get("props") or {})
    fresh = {
        "interval": fact.interval,
        "interval_count": fact.interval_count,
        "price": fact.price,
        "currency": fact.currency,
        "items": [render.item_dict(i) for i in fact.items] or None,
    }
    for k, v in render.to_json(fresh).items():
        if newer or k not in props:
            props[k] = v
    out = {**rec, "props": props}
    state = {
        "start": iso_z(fact.created_at) if fact.created_at else None,
        "cancel": iso_z(fact.canceled_at) if fact.canceled_at else None,
        "reason": fact.cancellation_reason,
        "next": iso_z(fact.next_charge_at) if fact.next_charge_at else None,
        "oo": fact.origin_order_id,
    }
    for k, v in state.items():
        if v is not None and (newer or not out.get(k)):
            out[k] = v
    return out


def decide(
    mapped: Mapped, view: StateView, policy: Policy, triggered_at: datetime | None = None
) -> list[Outgoing]:
    """Candidate calls -> calls to send: identifies first, then tracks, then an alias.

    `triggered_at` (X-Shopify-Triggered-At) versions traits whose resource has no updated_at.
    """
    run = _Run(view, policy, triggered_at)
    if mapped.merge is not None:
        run.merge(mapped)
    run.trait_updates(mapped)
    if mapped.subscription is not None:
        run.subscription(mapped)
    elif mapped.billing is not None:
        run.billing(mapped)
    elif mapped.order is not None:
        run.order(mapped)
    elif mapped.refund is not None:
        run.refund(mapped)
    elif mapped.topic.startswith("carts/"):
        run.cart(mapped)
    elif mapped.topic.startswith("checkouts/"):
        run.checkout(mapped)
    elif mapped.browse is not None:
        run.browse(mapped)
    elif mapped.product is not None:
        run.product(mapped)
    else:
        for event in mapped.events:
            run.track(event, run.resolve(event.person))
    # A subscription app's customer linked by this webhook releases what waited for them.
    subscribers = [mapped.person, *(u.person for u in mapped.identifies)]
    if mapped.billing is not None:
        subscribers.append(mapped.billing.person)
    if mapped.subscription is not None:
        subscribers.append(mapped.subscription.person)
    released = [r.subscriber for r in subscribers if r and r.subscriber]
    if released:  # (most webhooks name no subscription app's customer)
        run.release(list(dict.fromkeys("subscriber:" + s for s in released)))
    if mapped.browse is None:
        run.link_browsers(mapped)  # browsers that claimed this webhook's cart or checkout
    return run.outgoing()
