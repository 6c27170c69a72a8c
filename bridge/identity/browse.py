"""Browse events and the links that join a browser to a person (issue 17). Pure over a StateView.

The identity rule: nothing a browser sends names a person. A browse event is about its
browser (`client:<anonymous id>`, the id derived from the shop and the pixel's clientId). A
browser joins a person only through a link a signed webhook confirms:

- a pixel event carrying cart token T (or checkout token K) while the `cart:T` (`checkout:K`)
  record is already linked to a person by a signed webhook links the browser at once;
- otherwise the browser is left as a *claimant* of T (K) in `claim:cart:T` (`claim:co:K`);
  the signed webhook that later links that cart or checkout to a person (carts/*, checkouts/*,
  orders/create) links every claimant (`link_claimants`).

A link is one identify {userId, anonymousId: the browser's}, sent once per browser (the client
record's "user" is the guard): Customer.io then merges the browser's anonymous history into the
person, through the same identify-with-anonymousId path that merges a cart's. A forged event can
at most add an anonymous browse event, or claim a token (claims are capped per token, and a
claim alone links nothing).

Records (relative to the shop's state prefix). Anyone can post made-up clientIds and tokens
without end, so what they name is bounded: names are short keyed digests of them
(keyed.record_digest), never the ids themselves, and what no signed webhook confirmed expires
soon:
- `client:<digest of anon>` -> {"a": the browser's anonymous id (a record whose "a" is another
  browser's shares the digest by chance and is not this browser's), "user", "ids", "pv", "hr",
  "n" (browse_policy.py), "lb": the latest visit seen, "lbs": when `last_browsed_at` was last
  sent}; kept CLIENT_TTL_S once linked to a person, else only as long as the policy needs it
  (`anonymous_ttl_s`: the view window, at least the hour of the hourly cap);
- `claim:cart:<digest of token>`, `claim:co:<digest of token>` -> {"c": [browser anonymous
  ids], "t": when last claimed}, kept CLAIM_TTL_S after the last event claiming it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from bridge.canonical import BrowseFact, Mapped, PersonRef, TraitUpdate
from bridge.delivery import render
from bridge.delivery.calls import Call
from bridge.identity.browse_policy import DEFAULT_POLICY, FORWARDED, BrowsePolicy, judge
from bridge.identity.graph import Policy, _better, linked_user
from bridge.identity.records import DAY_S, StateView
from bridge.identity.traits import Identities, person_name
from bridge.identity.view import count
from bridge.ids import iso_z
from bridge.keyed import record_digest

CLIENT_TTL_S = 30 * DAY_S  # a browser linked to a person
# A claim no signed webhook confirmed within this time after its last event is dropped: a
# real shopper's checkout follows their last page view within minutes, and made-up tokens
# must not pile up.
CLAIM_TTL_S = 3600
CLAIM_REFRESH_S = 900  # a claim re-claimed after this long is written again (its TTL renewed)
MAX_CLAIMANTS = 4  # browsers one token may name (a shared cart; a forger cannot add more)
LAST_BROWSED_AT = "last_browsed_at"
LAST_BROWSED_EVERY_S = 3600  # the trait is sent at most this often per person


def client_name(client: str) -> str:
    """The record of the browser whose anonymous id is `client`."""
    return "client:" + record_digest("client", client)


def claim_names(cart_token: str | None, checkout_token: str | None) -> list[str]:
    """The claim records a cart and checkout token name."""
    names = []
    if cart_token:
        names.append(_cart_claim(cart_token))
    if checkout_token:
        names.append(_checkout_claim(checkout_token))
    return names


def _cart_claim(cart_token: str) -> str:
    return "claim:cart:" + record_digest("cart", cart_token)


def _checkout_claim(checkout_token: str) -> str:
    return "claim:co:" + record_digest("co", checkout_token)


def anonymous_ttl_s(policy: BrowsePolicy) -> int:
    """How long the record of a browser linked to nobody is kept after its last forwarded
    event: what the policy reads back (product views within the window, the hourly cap's
    count), no longer. Its event ids for dedupe matter for seconds only."""
    return max(policy.view_window_s, LAST_BROWSED_EVERY_S)


def client_record(view: StateView, client: str) -> dict[str, Any]:
    """The browser's record, or {} when there is none or the one under its name is another
    browser's (their digests collide)."""
    rec = view.get(client_name(client)) or {}
    return rec if rec.get("a") == client else {}


def _confirmed(cart_token: str | None, checkout_token: str | None) -> list[str]:
    """The records a signed webhook links to a person for these tokens."""
    names = []
    if cart_token:
        names.append("cart:" + cart_token)
    if checkout_token:
        names.append("checkout:" + checkout_token)
    return names


def records_for(fact: BrowseFact) -> list[str]:
    """The records deciding one browse event reads (loaded with the batch)."""
    return [
        client_name(fact.client),
        *_confirmed(fact.cart_token, fact.checkout_token),
        *claim_names(fact.cart_token, fact.checkout_token),
    ]


def link_call(user: str, client: str, at: datetime, shop: str, traits: dict[str, Any]) -> Call:
    """The identify that merges a browser's anonymous history into its person."""
    update = TraitUpdate(person=PersonRef(), traits=traits, timestamp=at)
    return render.identify_call(update, user_id=user, anonymous_id=client, shop=shop)


def _later(known: Any, seen: str) -> str:
    """The later of a record's visit time (ISO, or absent) and an event's: a browse event that
    arrives late never moves a visit time back."""
    return known if isinstance(known, str) and known > seen else seen


def _browsed_newer(view: StateView, user: str, visit: str) -> bool:
    """Whether `visit` is later than the `last_browsed_at` the person was last sent (its
    version in their record, as traits.Identities keeps it): the trait only ever moves
    forward, whichever of the person's browsers, and in whatever order, its events come."""
    sent = ((view.get(person_name(user)) or {}).get("f") or {}).get(LAST_BROWSED_AT)
    return not sent or str(sent[0] or "") < visit


def _record_browsed(view: StateView, user: str, visit: str) -> None:
    """Note in the person's record that `visit` was sent as their last_browsed_at (by a link
    call, which goes out without traits.Identities)."""
    name = person_name(user)
    rec = view.get(name) or {}
    view.put(name, {**rec, "f": {**(rec.get("f") or {}), LAST_BROWSED_AT: [visit, visit]}})


def _link(
    view: StateView, client: str, rec: dict[str, Any], user: str, at: datetime, shop: str
) -> tuple[dict[str, Any], Call | None]:
    """Link a browser to `user` once (a link to an email may later become one to the customer
    id, as graph links do): the client record to write and the identify to send, if any. The
    identify carries the browser's last visit only when that is later than the person's."""
    if not _better(rec.get("user"), user):
        return rec, None
    visit = rec.get("lb")
    traits: dict[str, Any] = {}
    rec = {**rec, "user": user}
    if isinstance(visit, str) and visit and _browsed_newer(view, user, visit):
        traits[LAST_BROWSED_AT] = visit
        _record_browsed(view, user, visit)
        rec["lbs"] = iso_z(at)
    return rec, link_call(user, client, at, shop, traits)


def _claim(view: StateView, names: list[str], client: str, now: datetime) -> None:
    """Leave the browser as a claimant of each record, or renew its claim (at most every
    CLAIM_REFRESH_S, so a browsing session costs few writes) so it expires CLAIM_TTL_S after
    the last event that made it."""
    at = iso_z(now)
    for name in names:
        rec = view.get(name) or {}
        claimants = list(rec.get("c") or [])
        if client in claimants:
            if str(rec.get("t") or "") > iso_z(now - timedelta(seconds=CLAIM_REFRESH_S)):
                continue
            view.put(name, {**rec, "t": at}, ttl_s=CLAIM_TTL_S)
            continue
        view.put(name, {"c": [*claimants, client][-MAX_CLAIMANTS:], "t": at}, ttl_s=CLAIM_TTL_S)
        count(view, "browse_links:claim:left")


def decide_browse(
    mapped: Mapped, view: StateView, policy: Policy, ids: Identities
) -> list[tuple[Call, str]]:
    """One pixel event: its browser linked if a signed webhook already confirmed a token it
    carries (else a claim left), then the store's volume policy; returns (call, person) pairs
    to send, identifies first. `last_browsed_at` goes to a linked person through `ids`."""
    fact = mapped.browse
    if fact is None:
        return []
    rules = policy.browse or DEFAULT_POLICY
    now = policy.clock()
    name = client_name(fact.client)
    stored = client_record(view, fact.client)
    rec = dict(stored)
    out: list[tuple[Call, str]] = []
    event = mapped.events[0] if mapped.events else None
    confirmed = linked_user(view, *_confirmed(fact.cart_token, fact.checkout_token))
    if confirmed:
        # The link carries the browser's latest visit (this one, unless an earlier event was
        # later) as the person's last_browsed_at, if later than theirs.
        seen = {} if event is None else {"lb": _later(rec.get("lb"), iso_z(event.timestamp))}
        rec, call = _link(view, fact.client, {**rec, **seen}, confirmed, now, policy.shop)
        if call is not None:
            out.append((call, confirmed))
            count(view, "browse_links:pixel:linked")
    else:
        _claim(view, claim_names(fact.cart_token, fact.checkout_token), fact.client, now)
    user = rec.get("user")
    outcome, judged = judge(
        rec,
        pixel_event=fact.pixel_event,
        event_id=fact.event_id,
        client=fact.client,
        product=fact.product,
        linked=bool(user),
        now=now,
        policy=rules,
    )
    # `received` here, not in the web: one HINCRBY per batch instead of one per request.
    count(view, f"browse:{fact.pixel_event}:received")
    count(view, f"browse:{fact.pixel_event}:{outcome}")
    if outcome == FORWARDED and judged is not None and event is not None:
        rec = {**judged, "lb": _later(judged.get("lb"), iso_z(event.timestamp))}
        who = str(user) if user else None
        for call in render.track_call(
            event, user_id=who, anonymous_id=fact.client, shop=policy.shop, naming=policy.naming
        ):
            out.append((call, who or fact.client))
    if user and outcome != "duplicate" and event is not None:
        last = str(rec.get("lbs") or "")
        visit = _later(rec.get("lb"), iso_z(event.timestamp))
        hour_ago = iso_z(now - timedelta(seconds=LAST_BROWSED_EVERY_S))
        # At most hourly, so a browsing session costs one identify; and only forward: an
        # event that arrives late (an older visit) sends nothing and keeps the hour open.
        if (not last or last <= hour_ago) and _browsed_newer(view, str(user), visit):
            at = event.timestamp
            version = datetime.fromisoformat(visit.replace("Z", "+00:00"))
            ids.versioned(str(user), {LAST_BROWSED_AT: visit}, version, at, None)
            rec["lb"], rec["lbs"] = visit, iso_z(now)
    if rec != stored:
        ttl_s = CLIENT_TTL_S if rec.get("user") else anonymous_ttl_s(rules)
        view.put(name, {**rec, "a": fact.client}, ttl_s=ttl_s)
    return out


def link_claimants(
    refs: list[PersonRef | None], view: StateView, policy: Policy
) -> list[tuple[Call, str]]:
    """After a signed webhook was decided: every browser that claimed one of its cart or
    checkout tokens is linked to the person that webhook linked the token to (if any)."""
    out: list[tuple[Call, str]] = []
    done: list[PersonRef] = []
    for ref in refs:
        if ref is None or not (ref.cart_token or ref.checkout_token):
            continue
        if any(ref is seen or ref == seen for seen in done):
            # A webhook's person and its events' are mostly one ref: a second pass would find
            # each claim as the first left it (linked and deleted, or still waiting), and do
            # nothing.
            continue
        done.append(ref)
        # Each token's claim record and the record that confirms it (as `claim_names` and
        # `_confirmed` name them), paired without building four lists for every webhook.
        pairs = []
        if ref.cart_token:
            pairs.append((_cart_claim(ref.cart_token), "cart:" + ref.cart_token))
        if ref.checkout_token:
            pairs.append((_checkout_claim(ref.checkout_token), "checkout:" + ref.checkout_token))
        for claim, confirmed in pairs:
            rec = view.get(claim)
            claimants = list(rec.get("c") or []) if rec else []
            if not claimants:
                continue
            user = linked_user(view, confirmed)
            if not user:
                continue  # a guest's cart, not yet anyone's: the claim waits
            now = policy.clock()
            for client in claimants:
                stored = client_record(view, client)
                linked, call = _link(view, client, stored, user, now, policy.shop)
                if call is not None:
                    view.put(client_name(client), {**linked, "a": client}, ttl_s=CLIENT_TTL_S)
                    out.append((call, user))
                    count(view, "browse_links:webhook:linked")
            view.delete(claim)
    return out
