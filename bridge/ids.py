"""Deterministic identifiers: ULID-form messageIds and normalised cart tokens. Pure."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD)
_GID_CART = "gid://shopify/Cart/"


def message_id(at: datetime, *parts: str) -> str:
    """A ULID whose time is `at` and whose random part is a hash of `parts`.

    The same business event always gets the same id, so a retry, a redelivery or a replay
    can be deduplicated downstream; the time prefix keeps ids sortable by event time.
    """
    ms = int(at.timestamp() * 1000)
    if not 0 <= ms < 2**48:
        ms = 0
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    value = (ms << 80) | int.from_bytes(digest[:10], "big")
    # 26 base-32 digits are 130 bits: shifted into 160 bits, the first 26 characters of the
    # standard base32 encoding are exactly those digits (in the RFC 4648 alphabet).
    return (
        base64.b32encode((value << 30).to_bytes(20, "big"))[:26].decode().translate(_TO_CROCKFORD)
    )


def message_id_time(mid: str) -> datetime:
    """The event time encoded in a messageId (inverse of the time part of `message_id`)."""
    value = 0
    for ch in mid:
        value = value * 32 + _CROCKFORD.index(ch)
    return datetime.fromtimestamp((value >> 80) / 1000, tz=UTC)


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
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
