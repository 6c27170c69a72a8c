"""Outbound Pipelines calls (Segment spec dicts): local validation and size limits. Pure.

Pipelines in strict mode rejects a whole batch for one bad call, and in permissive mode drops
oversize requests with a 200, so every call is checked here before it is queued.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_CALL_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
# Room for `{"batch":[...]}` and `sentAt` around the calls.
BATCH_ENVELOPE_BYTES = 256

Call = dict[str, Any]


class InvalidCall(ValueError):
    """A call Pipelines would reject; `str()` says which rule it breaks."""


def dumps(call: Call) -> bytes:
    return orjson.dumps(call)


def validate_call(call: Call) -> bytes:
    """Check required fields and the 32 KB limit; return the call's JSON bytes."""
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
        raise InvalidCall(f"call is {len(raw)} bytes, over the 32 KB limit")
    return raw
