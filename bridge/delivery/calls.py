"""Outbound Pipelines calls (Segment spec dicts): local validation and size limits. Pure.

Pipelines in strict mode rejects a whole batch for one bad call, and in permissive mode drops
oversize requests with a 200, so every call is checked here before it is queued.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_CALL_BYTES = 32 * 1024
# The docs say "500 KB" without a byte count and drop an oversize request with a 200: read
# as the smaller 500 000 bytes, so neither reading loses a batch.
MAX_BATCH_BYTES = 500 * 1000
# Room for `{"batch":[...]}` and `sentAt` around the calls.
BATCH_ENVELOPE_BYTES = 256
# Customer.io's semantic event a customers/redact forwards (FORWARD_REDACTIONS, compliance/).
USER_DELETED = "User Deleted"

Call = dict[str, Any]


class InvalidCall(ValueError):
    """A call Pipelines would reject; `str()` says which rule it breaks."""


def dumps(call: Call) -> bytes:
    return orjson.dumps(call)


def validate_call(call: Call) -> bytes:
    """Check required fields and the 32 KB limit; return the call's JSON bytes.

    A call over 32 KB is sent trimmed of optional data (see `_trimmed`) rather than lost;
    raises InvalidCall when a required field is missing or even the trimmed call is too large.
    """
    kind = call.get("type")
    if kind not in ("identify", "track", "alias", "page", "screen", "group"):
        raise InvalidCall(f"unknown call type {kind!r}")
    if not call.get("messageId"):
        raise InvalidCall("messageId is required")
    if kind == "alias":
        if not call.get("previousId") or not call.get("userId"):
            raise InvalidCall("alias needs previousId and userId")
    elif not call.get("userId") and not call.get("anonymousId"):
        raise InvalidCall(f"{kind} needs userId or anonymousId")
    if kind == "track" and not call.get("event"):
        raise InvalidCall("track needs event")
    raw = orjson.dumps(call)
    if len(raw) > MAX_CALL_BYTES:
        raw = _trimmed(call, len(raw))
    return raw


# Never trimmed: what names the call, its person and its time, and what the recovery flows
# key on (Customer.io segments and triggers read these).
_KEPT = frozenset(
    {"cart_id", "checkout_id", "order_id", "refund_id", "value", "total", "amount", "currency"}
)


def _trimmed(call: Call, size: int) -> bytes:
    """The call cut to 32 KB by dropping optional data, or InvalidCall if it cannot be.

    First the longest list of properties or traits (items) loses its tail half by half, and
    the call says so (`items_truncated`); then whole optional fields go, largest first. A call
    that is still too large (its required fields alone) is refused."""
    key = "properties" if isinstance(call.get("properties"), dict) else "traits"
    fields = call.get(key)
    if not isinstance(fields, dict):
        raise InvalidCall(f"call is {size} bytes, over the 32 KB limit")
    fields = dict(fields)
    call = {**call, key: fields}
    raw = orjson.dumps(call)
    lists = sorted((k for k, v in fields.items() if isinstance(v, list) and v), key=str)
    for name in lists:
        while len(raw) > MAX_CALL_BYTES and fields[name]:
            fields[name] = fields[name][: len(fields[name]) // 2]
            if key == "properties":
                fields["items_truncated"] = True
            raw = orjson.dumps(call)
    by_size = sorted(
        (k for k in fields if k not in _KEPT and k != "items_truncated"),
        key=lambda k: len(orjson.dumps(fields[k])),
        reverse=True,
    )
    for name in by_size:
        if len(raw) <= MAX_CALL_BYTES:
            break
        del fields[name]
        raw = orjson.dumps(call)
    if len(raw) > MAX_CALL_BYTES:
        raise InvalidCall(f"call is {size} bytes, over the 32 KB limit even without options")
    return raw
