"""JSON parsing that keeps 64-bit ids exact: orjson first (fast), the stdlib where it refuses."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import orjson

# Validates a whole document without building any of it (not even the top level's keys).
_ANY_DOCUMENT = msgspec.json.Decoder(msgspec.Raw)
# What JSON allows before the top-level value (RFC 8259 section 2).
_JSON_WHITESPACE = b" \t\n\r"


# A surrogate code point left in a str after parsing is a lone one (json pairs the others).
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_body(body: bytes) -> Any:
    """Parse JSON bytes. Raises ValueError for anything that is not JSON.

    Lone surrogates (`"\\ud800"`: valid JSON, invalid Unicode, and a real store's titles do
    hold them) become U+FFFD, so every str parsed here encodes as UTF-8 again downstream."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits and lone surrogates, both valid JSON.
        return _without_lone_surrogates(json.loads(body))


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    return value


def is_json_object(body: bytes) -> bool:
    """True when `body` parses (as `parse_body` would) to a JSON object.

    The request path's check: building every nested value as orjson does costs ~3x more than
    validating it, for a body the worker parses anyway. What the fast validator refuses and
    the stdlib may still accept (NaN, lone surrogates, a BOM) takes the full parse.
    """
    try:
        _ANY_DOCUMENT.decode(body)
        # A valid document is an object when its first byte past the whitespace opens one.
        # Validating into one msgspec.Raw instead of a dict of them (a str key and a Raw per
        # top-level field) costs 3.8 instead of 5.4 us for an 11 KB webhook: a third of the
        # check, and ~1.6 us of the web's own work per request.
        if body.lstrip(_JSON_WHITESPACE)[:1] != b"{":
            return False
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
