"""Webhook signatures, compared in constant time. Pure: the clock is passed in.

Shopify: base64(HMAC-SHA256(app secret, raw body)) in `X-Shopify-Hmac-Sha256`.

Recharge (`verify_recharge`), two schemes over the same raw body:
- timestamped (`X-Recharge-Webhook-Signature: t=<epoch s>,v1=<hex>`, and the same `t` in
  `X-Recharge-Webhook-Timestamp`): v1 = hex(HMAC-SHA256(client secret, "<t>.<raw body>"));
- legacy (`X-Recharge-Hmac-Sha256`): hex(SHA-256(client secret + raw body)), a plain hash of
  the concatenation, not an HMAC.
The timestamped scheme is used whenever its header is present (a failing one is never retried
under the legacy header); the legacy one only when it is absent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import NamedTuple


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


# Recharge's advice: refuse a signature timestamp older than 48 h (its own retries span 48 h).
RECHARGE_MAX_AGE_S = 48 * 3600
# A timestamp ahead of the clock is refused beyond this much skew. Accepting Recharge's
# symmetric `abs(now - t) <= 48 h` would keep a captured request valid for 96 h from its
# sending, longer than the drain remembers a delivery (WEBHOOK_DEDUPE_TTL_S, 72 h): a replay
# after that would be processed again. With 5 minutes of skew the window stays inside it.
RECHARGE_MAX_AHEAD_S = 300
_EPOCH = re.compile(r"[0-9]{1,12}")
# A header is a few pairs; more than this is not Recharge's and is not read further.
_MAX_PAIRS = 8


class RechargeVerdict(NamedTuple):
    """What `verify_recharge` found. `problem` is None when the signature holds, else one of
    "missing", "mismatch", "expired" (timestamp older than 48 h or too far ahead); `signed_at`
    is the signed timestamp (epoch seconds) of a valid timestamped signature, else None."""

    problem: str | None
    signed_at: int | None = None

    @property
    def valid(self) -> bool:
        return self.problem is None


def _signature_pairs(header: str) -> tuple[list[str], list[str]]:
    """The `t` and `v1` values of a `t=<epoch>,v1=<hex>` header, read by key (later schemes may
    add `v2=`, which is ignored)."""
    times: list[str] = []
    v1: list[str] = []
    for part in header.split(",", _MAX_PAIRS)[:_MAX_PAIRS]:
        key, _, value = part.partition("=")
        key = key.strip()
        if key == "t":
            times.append(value.strip())
        elif key == "v1":
            v1.append(value.strip())
    return times, v1


def _hex(value: str) -> bytes | None:
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def verify_recharge(
    body: bytes,
    *,
    signature: str | None,
    timestamp: str | None,
    legacy: str | None,
    secret: bytes,
    now_s: float,
) -> RechargeVerdict:
    """Check a Recharge webhook's signature headers against the raw `body` and the client
    `secret` (see the module docstring); `now_s` is the clock (epoch seconds).

    The timestamped scheme needs one `t` (from the signature header, else the timestamp header;
    both present and different is a mismatch) no older than RECHARGE_MAX_AGE_S and no more than
    RECHARGE_MAX_AHEAD_S ahead. The digest is computed before any of that is judged, so the
    time taken tells nothing but the body's length. Never raises.
    """
    if signature and signature.strip():
        times, v1 = _signature_pairs(signature)
        header_time = (timestamp or "").strip()
        if header_time:
            times.append(header_time)
        t = times[0] if times else ""
        # errors="replace": a header str with a lone surrogate cannot be encoded otherwise.
        signed = t.encode(errors="replace") + b"." + body
        digest = hmac.new(secret, signed, hashlib.sha256).digest()
        matched = False
        for value in v1:
            given = _hex(value)
            matched |= given is not None and hmac.compare_digest(digest, given)
        if not matched or len(set(times)) != 1 or not _EPOCH.fullmatch(t):
            return RechargeVerdict("mismatch")
        at = int(t)
        if now_s - at > RECHARGE_MAX_AGE_S or at - now_s > RECHARGE_MAX_AHEAD_S:
            return RechargeVerdict("expired")
        return RechargeVerdict(None, at)
    if legacy and legacy.strip():
        digest = hashlib.sha256(secret + body).digest()
        given = _hex(legacy.strip())
        if given is None or not hmac.compare_digest(digest, given):
            return RechargeVerdict("mismatch")
        return RechargeVerdict(None)
    return RechargeVerdict("missing")
