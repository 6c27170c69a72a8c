"""Subscriptions: one record per subscription, a per-person index, the traits computed from it,
and the waits of billing facts whose subscription or subscriber is not known yet. Pure over a
StateView (the decision itself is `decide._Run.subscription` / `.billing`).

Records (relative to the shop's state prefix; `<ref>` is `<provider>:<id>`, `<person>` as in
`bridge.identity.graph.person_key`):
- `sub:<ref>` -> `{"user", "st", "v", "rev", "start", "cancel", "reason", "next", "oo", "dun",
  "fails": {cycle: {"n", "ids"}}, "ok", "skips", "sent", "props"}`: the subscription's latest
  state, the contract -> customer link billing payloads are joined through ("user", set by
  `graph.resolve`), its open failures per billing cycle and the once-only events it sent.
- `subs:<person>` -> `{"s": {ref: {"st", "dun", "v", "start", "cancel", "next", "oo"}}}`: what
  the traits are computed from, in one read.
- `subscriber:<provider>:<id>` -> `{"user"}`: a subscription app's customer (Recharge's id).
- `sub_wait:<record name>` -> `{"since", "looked_up", "outcome", "held": [Mapped JSON]}`: facts
  waiting for `sub:<ref>` or `subscriber:<...>` to name a person; `held:links` lists them
  shop-wide for the sweep (`expire_waits`).

Status precedence across a person's subscriptions (the `subscription_status` trait):
active > paused > dunning > canceled > expired. A subscription is `dunning` when its source
says billing failed (Shopify's FAILED) or, while active, a billing cycle has failures no success
has closed yet. A Shopify contract and a Recharge subscription with the same origin order are
one subscription: the newer of the two speaks for it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson

from bridge.canonical import SUB_ACTIVE, SUB_CANCELED, SUB_EXPIRED, SUB_FAILED, SUB_PAUSED, Mapped
from bridge.identity.records import StateView
from bridge.identity.view import count
from bridge.ids import iso_z

DUNNING = "dunning"
# Highest first: one value per person, from the best of their subscriptions.
STATUS_PRECEDENCE = (SUB_ACTIVE, SUB_PAUSED, DUNNING, SUB_CANCELED, SUB_EXPIRED)
SUBSCRIPTION_TRAITS = (
    "subscription_status",
    "active_subscriptions",
    "next_charge_date",
    "subscription_started_at",
    "subscription_canceled_at",
)
HELD_LINKS = "held:links"
# Bounds that keep one subscription's record small whatever a source sends it.
MAX_HELD_PER_WAIT = 50
MAX_ATTEMPT_IDS = 20
MAX_OPEN_CYCLES = 12
MAX_SKIPS = 24


def record_name(ref: str) -> str:
    return "sub:" + ref


def index_name(person: str) -> str:
    return "subs:" + person


def wait_name(name: str) -> str:
    return "sub_wait:" + name


def effective(entry: dict[str, Any]) -> str | None:
    """One subscription's status for the traits: its source's status, `dunning` while its
    payments fail; None while nothing says what it is."""
    status = entry.get("st")
    if status == SUB_FAILED:
        return DUNNING
    if entry.get("dun") and status in (SUB_ACTIVE, None):
        return DUNNING
    return str(status) if status else None


def index(view: StateView, person: str) -> dict[str, dict[str, Any]]:
    rec = view.get(index_name(person)) or {}
    return dict(rec.get("s") or {})


def index_entry(rec: dict[str, Any]) -> dict[str, Any]:
    """What the person's index keeps of one subscription record."""
    keep = ("st", "dun", "v", "start", "cancel", "next", "oo")
    return {k: rec[k] for k in keep if rec.get(k) is not None and rec.get(k) is not False}


def put_index(view: StateView, person: str, ref: str, rec: dict[str, Any]) -> bool:
    """Record one subscription under a person; True when the index changed."""
    entries = index(view, person)
    entry = index_entry(rec)
    if entries.get(ref) == entry:
        return False
    entries[ref] = entry
    view.put(index_name(person), {"s": entries})
    return True


def merge_index(view: StateView, source: str, target: str) -> bool:
    """Move a guest's subscriptions into the customer's index (idempotent by ref)."""
    if source == target:
        return False
    src = view.get(index_name(source))
    if not src or not src.get("s"):
        return False
    entries = index(view, target)
    for ref, entry in (src.get("s") or {}).items():
        old = entries.get(ref)
        if old is None or str(old.get("v") or "") <= str(entry.get("v") or ""):
            entries[ref] = entry
    view.put(index_name(target), {"s": entries})
    view.put(index_name(source), {"merged_into": target})
    return True


def _logical(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One entry per subscription: entries sharing an origin order (the same subscription seen
    by two sources) collapse into the newest of them."""
    by_origin: dict[str, tuple[str, dict[str, Any]]] = {}
    out: dict[str, dict[str, Any]] = {}
    for ref, entry in sorted(entries.items()):
        origin = entry.get("oo")
        if not origin:
            out[ref] = entry
            continue
        seen = by_origin.get(str(origin))
        if seen is None or str(seen[1].get("v") or "") < str(entry.get("v") or ""):
            by_origin[str(origin)] = (ref, entry)
    out.update(dict(by_origin.values()))
    return out


def group_status(entries: dict[str, dict[str, Any]], ref: str, origin: str | None) -> str | None:
    """The status of the subscription `ref` belongs to (with its twin from another source)."""
    mine = entries.get(ref)
    origin = origin or (mine or {}).get("oo")
    if origin:
        twins = [e for e in entries.values() if e.get("oo") == origin]
        if mine is not None and mine not in twins:
            twins.append(mine)
        if twins:
            return effective(max(twins, key=lambda e: str(e.get("v") or "")))
    return effective(mine) if mine is not None else None


def has_twin(entries: dict[str, dict[str, Any]], ref: str, origin: str | None) -> bool:
    """True when another source already reported the subscription with this origin order."""
    return bool(origin) and any(r != ref and e.get("oo") == origin for r, e in entries.items())


def subscription_traits(view: StateView, person: str, now: datetime) -> dict[str, Any]:
    """`subscription_status` (precedence above), `active_subscriptions`, `next_charge_date`
    (the earliest still ahead of `now` among active and dunning ones: Shopify's contract
    webhooks carry no billing date, so one read from the Admin API goes stale, and a date in the
    past is no next charge), `subscription_started_at` (the earliest),
    `subscription_canceled_at` (the latest, among canceled ones). Empty with no subscription."""
    entries = [e for e in _logical(index(view, person)).values() if effective(e)]
    if not entries:
        return {}
    statuses = [effective(e) for e in entries]
    status = min(
        statuses, key=lambda s: STATUS_PRECEDENCE.index(s) if s in STATUS_PRECEDENCE else 99
    )
    ahead = iso_z(now)
    billing = [
        e
        for e in entries
        if effective(e) in (SUB_ACTIVE, DUNNING) and str(e.get("next") or "") >= ahead
    ]
    starts = [str(e["start"]) for e in entries if e.get("start")]
    cancels = [
        str(e["cancel"]) for e in entries if effective(e) == SUB_CANCELED and e.get("cancel")
    ]
    return {
        "subscription_status": status,
        "active_subscriptions": sum(1 for s in statuses if s == SUB_ACTIVE),
        "next_charge_date": min(str(e["next"]) for e in billing) if billing else None,
        "subscription_started_at": min(starts) if starts else None,
        "subscription_canceled_at": max(cancels) if cancels else None,
    }


def is_newer(rec: dict[str, Any], revision: int | None, version: str) -> bool:
    """Does a snapshot (revision, version ISO) replace the stored state? Shopify's contract
    `revision_id` orders snapshots when both sides have one: every change to a contract bumps
    it, while the trigger time of two quick changes can tie or arrive skewed. Otherwise the
    resource's `updated_at` (Recharge; Shopify's Admin reads), else the trigger time, orders
    them; a snapshot as new as the stored one replaces it (a redelivery changes nothing)."""
    if not rec.get("v"):
        return True
    stored_rev = rec.get("rev")
    if revision is not None and isinstance(stored_rev, int) and stored_rev != revision:
        return revision > stored_rev
    return version >= str(rec["v"])


# --- waits ----------------------------------------------------------------------------------
def hold(view: StateView, name: str, mapped: Mapped, now: datetime) -> bool:
    """Keep a fact until the record `name` names its person; False when the wait is full (the
    caller parks it)."""
    wname = wait_name(name)
    rec = dict(view.get(wname) or {})
    held = list(rec.get("held") or [])
    dumped = mapped.model_dump(mode="json")
    if dumped in held:
        return True  # the same fact twice (a redelivery with another id): kept once
    if len(held) >= MAX_HELD_PER_WAIT:
        return False
    since = str(rec.get("since") or iso_z(now))
    view.put(wname, {**rec, "since": since, "held": [*held, dumped]})
    idx = view.get(HELD_LINKS) or {}
    entries = dict(idx.get("e") or {})
    if name not in entries:
        entries[name] = since
        view.put(HELD_LINKS, {"e": entries})
    return True


def take_held(view: StateView, name: str) -> list[Mapped]:
    """The facts waiting on `name`, removed from the wait (the caller decides them now)."""
    wname = wait_name(name)
    rec = view.get(wname)
    if not rec:
        return []
    view.delete(wname)
    _unlist(view, name)
    return [Mapped.model_validate(m) for m in rec.get("held") or []]


def _unlist(view: StateView, name: str) -> None:
    idx = view.get(HELD_LINKS) or {}
    entries = dict(idx.get("e") or {})
    if entries.pop(name, None) is None:
        return
    if entries:
        view.put(HELD_LINKS, {"e": entries})
    else:
        view.delete(HELD_LINKS)


def expire_waits(view: StateView, now: datetime, wait_s: int) -> tuple[list[str], list[bytes]]:
    """Waits past `wait_s`: the first time, their names come back for a lookup (the sweep asks
    the Admin API for a Shopify contract, then `record_lookup`); after another `wait_s` still
    unresolved, their facts are parked with the reason. Returns (names to look up, parked)."""
    idx = view.get(HELD_LINKS) or {}
    entries = dict(idx.get("e") or {})
    due: list[str] = []
    parked: list[bytes] = []
    limit = now - timedelta(seconds=wait_s)
    for name, since in sorted(entries.items()):
        if datetime.fromisoformat(since) > limit:
            continue
        wname = wait_name(name)
        rec = view.get(wname)
        if rec is None:
            if view.has_loaded(wname):
                entries.pop(name)  # its facts were taken: a stale listing
            continue
        looked = rec.get("looked_up")
        if not looked:
            view.put(wname, {**rec, "looked_up": iso_z(now)})
            due.append(name)
            continue
        if datetime.fromisoformat(str(looked)) > limit:
            continue
        reason = f"{name.split(':', 1)[0]} {name.split(':', 1)[1]} not seen within {wait_s} s"
        if rec.get("outcome"):
            reason += f"; lookup: {rec['outcome']}"
        for held in rec.get("held") or []:
            parked.append(
                orjson.dumps(
                    {
                        "kind": "subscription",
                        "reason": reason,
                        "waiting_for": name,
                        "topic": held.get("topic"),
                        "since": since,
                        "at": iso_z(now),
                        "mapped": held,
                    }
                )
            )
        view.delete(wname)
        entries.pop(name)
    if entries != (idx.get("e") or {}):
        if entries:
            view.put(HELD_LINKS, {"e": entries})
        else:
            view.delete(HELD_LINKS)
    if parked:
        count(view, "subscriptions:held:parked_unresolved", len(parked))
    return due, parked


def record_lookup(view: StateView, name: str, outcome: str) -> None:
    """Note what the lookup of a waited-for record found (it goes into the parked reason)."""
    wname = wait_name(name)
    rec = view.get(wname)
    if rec is not None:
        view.put(wname, {**rec, "outcome": outcome[:200]})
