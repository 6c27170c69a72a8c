"""Volume control for storefront browse events (issue 17): which pixel events are forwarded,
sampling, throttling and the hourly cap, as pure functions over one client's record. No I/O,
no settings, no clock (the caller passes `now`).

A client record (`client:<digest of the anonymous id>`, identity/browse.py) keeps, under short keys:
`ids` the client's last DEDUPE_IDS pixel event ids, `pv` {product: ISO time of its last
forwarded view}, `hr` the hour bucket ("2026-12-01T07") of `n` events forwarded in it.
Everything is judged on the batch's clock, never the browser's timestamps (anyone can post).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bridge.ids import iso_z

# The standard Web Pixels events the collector accepts (shared docs web-pixels.md section 3).
PIXEL_EVENTS = (
    "product_viewed",
    "collection_viewed",
    "search_submitted",
    "product_added_to_cart",
    "cart_viewed",
    "checkout_started",
    "checkout_completed",
)
# Forwarded unless a store says otherwise: the two browse abandonment needs. Collection views
# and searches are the bulk of storefront traffic; cart_viewed repeats what carts/* webhooks
# say; the checkout pair repeats checkouts/* and orders/* (which stay authoritative): those
# still link a browser to a person when they carry a token, they are just not sent.
DEFAULT_FORWARDED = ("product_viewed", "product_added_to_cart")
DEDUPE_IDS = 32  # event ids a client record remembers (a replay comes within seconds)
MAX_VIEWED_PRODUCTS = 50  # products a client record remembers views of (oldest dropped)

# Outcomes, as counted (`browse:<pixel event>:<outcome>`).
FORWARDED = "forwarded"
DUPLICATE = "duplicate"
OFF = "off"  # the store does not forward this event
SAMPLED_OUT = "sampled_out"
THROTTLED = "throttled"  # a view of the same product within the window
CAPPED = "capped"  # the client's hourly cap was reached


@dataclass(frozen=True)
class BrowsePolicy:
    """A shop's browse-event rules (built by ProcessConfig from settings and the store)."""

    forwarded: frozenset[str] = frozenset(DEFAULT_FORWARDED)
    view_window_s: int = 6 * 3600
    sample_rate: float = 1.0
    client_hourly_cap: int = 60


DEFAULT_POLICY = BrowsePolicy()


def sample_point(client: str) -> float:
    """Where a client falls in [0, 1): a hash of its id, the same in every process and run."""
    digest = hashlib.sha256(client.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def sampled_in(client: str, rate: float) -> bool:
    """Deterministic sampling: a client is always in or always out at a given rate."""
    return rate >= 1.0 or (rate > 0.0 and sample_point(client) < rate)


def hour_bucket(now: datetime) -> str:
    return iso_z(now)[:13]


def judge(
    rec: dict[str, Any],
    *,
    pixel_event: str,
    event_id: str,
    client: str,
    product: str | None,
    linked: bool,
    now: datetime,
    policy: BrowsePolicy,
) -> tuple[str, dict[str, Any] | None]:
    """One received pixel event's outcome and the client record to write (None: unchanged).

    In order: a duplicate id, an event the store does not forward, an anonymous client
    sampled out (a linked one is always kept), a product viewed within the window, the
    hourly cap; else forwarded. Only a forwarded event changes the record, so a drop costs
    no write; a duplicate is recognised among forwarded ones (the others are dropped anyway).
    """
    ids = list(rec.get("ids") or [])
    if event_id in ids:
        return DUPLICATE, None
    if pixel_event not in policy.forwarded:
        return OFF, None
    if not linked and not sampled_in(client, policy.sample_rate):
        return SAMPLED_OUT, None
    now_iso = iso_z(now)
    viewed: dict[str, str] = dict(rec.get("pv") or {})
    if pixel_event == "product_viewed" and product:
        last = viewed.get(product)
        window_start = iso_z(now - timedelta(seconds=policy.view_window_s))
        if last is not None and last > window_start:
            return THROTTLED, None
    hour = hour_bucket(now)
    forwarded_this_hour = int(rec.get("n") or 0) if rec.get("hr") == hour else 0
    if forwarded_this_hour >= policy.client_hourly_cap:
        return CAPPED, None
    out = dict(rec)
    out["ids"] = [*ids, event_id][-DEDUPE_IDS:]
    out["hr"], out["n"] = hour, forwarded_this_hour + 1
    if pixel_event == "product_viewed" and product:
        viewed.pop(product, None)
        viewed[product] = now_iso
        # Insertion order is view order: the oldest views go first.
        out["pv"] = dict(list(viewed.items())[-MAX_VIEWED_PRODUCTS:])
    return FORWARDED, out
