"""Time-driven identity work: drop checkouts that never got a contact, park refunds whose order
never came. Pure: the clock is an argument; the worker's sweep (worker/sweep.py) is the shell that
loads the records and commits the result under the shop's drain lease.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson

from bridge.identity.decide import HELD_REFUNDS
from bridge.identity.records import StateView
from bridge.identity.view import count
from bridge.ids import iso_z


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
