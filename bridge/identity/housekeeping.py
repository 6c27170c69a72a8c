"""Time-driven identity work: drop checkouts that never got a contact, park refunds whose order
never came. The pure functions take the clock as an argument; `housekeep` is the thin shell the
periodic sweep calls (under the shop's drain lease, so the shop's state keeps one writer).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import orjson

from bridge.identity.carts import HELD_CHECKOUTS, expire_held
from bridge.identity.decide import HELD_REFUNDS
from bridge.identity.records import StateView
from bridge.identity.view import DecisionView, count
from bridge.ids import iso_z
from bridge.store.facade import Keys

if TYPE_CHECKING:
    from bridge.services import Runtime

log = logging.getLogger(__name__)

HOUSEKEEP_EVERY_S = 60
LEASE_MS = 30_000
MAX_ROUNDS = 3


def expire_refunds(view: StateView, now: datetime, wait_s: int) -> list[bytes]:
    """Park refunds that waited `wait_s` for their order; returns the parked records."""
    idx = view.get(HELD_REFUNDS) or {}
    entries = dict(idx.get("e") or {})
    limit = now - timedelta(seconds=wait_s)
    parked: list[bytes] = []
    for key, since in sorted(entries.items()):
        if datetime.fromisoformat(since) > limit:
            continue
        order_id, _, refund_id = key.partition("/")
        name = "refund_wait:" + order_id
        waiting = dict(view.get(name) or {})
        held = waiting.pop(refund_id, None)
        del entries[key]
        if waiting:
            view.put(name, waiting)
        else:
            view.delete(name)
        parked.append(
            orjson.dumps(
                {
                    "kind": "refund",
                    "reason": f"order not seen within {wait_s} s of its refund",
                    "order_id": order_id,
                    "refund_id": refund_id,
                    "since": since,
                    "at": iso_z(now),
                    "event": (held or {}).get("event"),
                }
            )
        )
    if parked:
        if entries:
            view.put(HELD_REFUNDS, {"e": entries})
        else:
            view.delete(HELD_REFUNDS)
        count(view, "events:order_refunded:parked_unresolved", len(parked))
    return parked


def housekeep(rt: Runtime, shop: str, now: datetime | None = None) -> int:
    """Expire held checkouts and refunds for one shop; returns how many were settled.

    Skips (returns 0) when a drain holds the shop's lease: the next sweep tries again.
    """
    keys = Keys(shop)
    token = uuid.uuid4().hex
    if not rt.store.acquire(keys.drain_lease, token, LEASE_MS):
        return 0
    try:
        now = now or datetime.now(UTC)
        s = rt.settings
        loaded = dict(rt.store.load_state([keys.state(HELD_CHECKOUTS), keys.state(HELD_REFUNDS)]))
        for _ in range(MAX_ROUNDS):
            view = DecisionView(loaded, key_of=keys.state)
            dropped = expire_held(view, now, s.checkout_contact_wait_s)
            parked = expire_refunds(view, now, s.refund_order_wait_s)
            missing = view.misses - loaded.keys()
            if not missing:
                break
            loaded.update(rt.store.load_state(missing))
        sets, dels = view.writes()
        if not (sets or dels or parked or view.counters):
            return 0
        pipe = rt.redis.pipeline(transaction=True)
        for key, (value, ttl) in sets.items():
            pipe.set(key, value, ex=ttl)
        if dels:
            pipe.delete(*dels)
        if parked:
            pipe.rpush(keys.parked, *parked)
        for name, n in view.counters.items():
            pipe.hincrby(keys.stats, name, n)
        pipe.execute()
        if dropped or parked:
            log.info(
                "identity housekeeping",
                extra={"shop": shop, "checkouts_dropped": dropped, "refunds_parked": len(parked)},
            )
        return dropped + len(parked)
    finally:
        rt.store.release(keys.drain_lease, token)


def housekeep_due(rt: Runtime, shop: str) -> bool:
    """True at most once a minute per shop (across every worker)."""
    return bool(rt.redis.set(Keys(shop).prefix + "house", "1", nx=True, ex=HOUSEKEEP_EVERY_S))
