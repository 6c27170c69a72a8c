"""Deterministic identifiers: ULID-form messageIds and normalised cart tokens. Pure."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every pair of Crockford digits (10 bits): a 130-bit ULID is 13 lookups.
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
# The time's 48 bits are the first 5 pairs (10 digits), the hash's 80 bits the other 8.
_TIME_SHIFTS = tuple(range(40, -1, -10))
_GID_CART = "gid://shopify/Cart/"
# Storefront browsers' anonymous ids (issue 17): a namespace of their own, so no client id can
# ever produce a cart's anonymous id (identity/graph.py) or the reverse.
_BROWSER_NS = uuid.UUID("5d7e0b3c-2f1a-4c8e-9a61-0c4b7e2d9f35")
# The time digits of recent messageIds, by millisecond: a webhook's calls mostly share their
# event's time. Bounded: emptied when full (any thread may; a miss only recomputes).
_TIME_DIGITS: dict[int, str] = {}
_TIME_DIGITS_MAX = 1024


def message_id(at: datetime, *parts: str) -> str:
    """A ULID whose time is `at` and whose random part is a hash of `parts`.

    The same business event always gets the same id, so a retry, a redelivery or a replay
    can be deduplicated downstream; the time prefix keeps ids sortable by event time.
    """
    ms = int(at.timestamp() * 1000)
    if not 0 <= ms < 2**48:
        ms = 0
    # 26 Crockford base-32 digits are 130 bits (the top two always 0 here), most significant
    # first; it runs once per outbound call, so by pairs from a table: the time's digits
    # remembered, the hash's 8 pairs looked up in line rather than by a comprehension over
    # shifts (callgrind, 20 000 calls: 27 960 -> 19 370 instructions a call).
    prefix = _TIME_DIGITS.get(ms)
    if prefix is None:
        if len(_TIME_DIGITS) >= _TIME_DIGITS_MAX:
            _TIME_DIGITS.clear()
        prefix = _TIME_DIGITS[ms] = "".join([_PAIRS[(ms >> s) & 1023] for s in _TIME_SHIFTS])
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    r = int.from_bytes(digest[:10], "big")
    p = _PAIRS
    return "".join(
        (
            prefix,
            p[r >> 70],
            p[(r >> 60) & 1023],
            p[(r >> 50) & 1023],
            p[(r >> 40) & 1023],
            p[(r >> 30) & 1023],
            p[(r >> 20) & 1023],
            p[(r >> 10) & 1023],
            p[r & 1023],
        )
    )


def message_id_time(mid: str) -> datetime:
    """The event time encoded in a messageId (inverse of the time part of `message_id`)."""
    value = 0
    for ch in mid:
        value = value * 32 + _CROCKFORD.index(ch)
    return datetime.fromtimestamp((value >> 80) / 1000, tz=UTC)


def client_anonymous_id(shop: str, client_id: str) -> str:
    """A storefront browser's anonymousId: a uuid5 of (shop, the pixel's clientId), so the same
    browser gets the same id in every process, and one shop's ids say nothing of another's."""
    return str(uuid.uuid5(_BROWSER_NS, f"{shop}\x1f{client_id}"))


def normalise_cart_token(raw: str | None) -> str | None:
    """Webhook and client cart tokens join only after dropping `?key=` and the GID prefix."""
    if raw is None:
        return None
    token = str(raw).strip()
    if token.startswith(_GID_CART):
        token = token[len(_GID_CART) :]
    token = token.split("?", 1)[0]
    return token or None


def gid_to_id(gid: str | int | None) -> str | None:
    """`gid://shopify/Customer/123` -> `123`; a bare id passes through as a string."""
    if gid is None:
        return None
    text = str(gid).strip()
    if not text:
        return None
    return text.rsplit("/", 1)[-1]


def iso_z(at: datetime) -> str:
    """ISO-8601 UTC with millisecond precision and a `Z`, as Pipelines expects."""
    u = at if at.tzinfo is UTC else at.astimezone(UTC)
    # This runs several times per outbound call: datetime's own (C) formatting, which pads the
    # year to 4 digits and truncates to milliseconds as the format always did, with its
    # "+00:00" (always, in UTC) swapped for the "Z" (an f-string of 7 fields: 5.9 -> 2.3 us).
    return u.isoformat(timespec="milliseconds")[:-6] + "Z"
