"""Shopify webhook signatures: base64(HMAC-SHA256(secret, raw body)), compared in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable


def sign(body: bytes, secret: bytes) -> str:
    """The `X-Shopify-Hmac-Sha256` value Shopify would send for `body`."""
    return base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest()).decode()


def verify(body: bytes, header: str | None, secrets: Iterable[bytes]) -> bool:
    """True when `header` signs the raw `body` under any secret (rotation keeps several live).

    Never parses or re-serialises the body: the signature covers the exact bytes. Every secret is
    tried, so the time taken does not tell which one matched or how much of the digest did.
    """
    if not header:
        return False
    try:
        given = base64.b64decode(header.strip(), validate=True)
    except (ValueError, TypeError):
        return False
    ok = False
    for secret in secrets:
        digest = hmac.new(secret, body, hashlib.sha256).digest()
        ok |= hmac.compare_digest(digest, given)
    return ok
