"""JSON parsing that keeps 64-bit ids exact: orjson first (fast), the stdlib where it refuses."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import orjson

# Decodes the top level only; nested values are scanned and validated but never built.
_TOP_LEVEL_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])


def parse_body(body: bytes) -> Any:
    """Parse JSON bytes. Raises ValueError for anything that is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits, which are still valid JSON.
        return json.loads(body)


def is_json_object(body: bytes) -> bool:
    """True when `body` parses (as `parse_body` would) to a JSON object.

    The request path's check: building every nested value as orjson does costs ~3x more than
    validating it, for a body the worker parses anyway. What the fast validator refuses and
    the stdlib may still accept (NaN, lone surrogates, a BOM) takes the full parse.
    """
    try:
        _TOP_LEVEL_OBJECT.decode(body)
        # Raw values are validated as JSON but their string bytes are not UTF-8 checked.
        if not body.isascii():
            body.decode()
        return True
    except (ValueError, RecursionError):
        pass
    try:
        return isinstance(parse_body(body), dict)
    except (ValueError, RecursionError):
        return False
