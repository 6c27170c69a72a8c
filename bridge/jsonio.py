"""JSON parsing that keeps 64-bit ids exact: orjson first (fast), the stdlib where it refuses."""

from __future__ import annotations

import json
from typing import Any

import orjson


def parse_body(body: bytes) -> Any:
    """Parse JSON bytes. Raises ValueError for anything that is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits, which are still valid JSON.
        return json.loads(body)
