"""The collector's cheap checks on a pixel body (pure): nesting depth before any parse."""

from __future__ import annotations

import json

import pytest

from bridge.jsonio import nested_deeper_than


@pytest.mark.parametrize(
    ("body", "deeper"),
    [
        (b"{}", False),
        (b"[" * 32 + b"]" * 32, False),
        (b"[" * 33 + b"]" * 33, True),
        # Objects and arrays alternating count alike (one level a pass, never two).
        (b'[{"a":' * 16 + b"1" + b"}]" * 16, False),
        (b'[{"a":' * 16 + b"[1]" + b"}]" * 16, True),
        # Climbing without a run of open brackets: [[] [[] ... still 33 deep.
        (b"[[]" * 32 + b"]" * 32, True),
        (b"[[]" * 31 + b"]" * 31, False),
        # Brackets in strings, escaped quotes and backslashes do not count.
        (json.dumps({"a": "[" * 100, "b": '\\"' + "{" * 100}).encode(), False),
        (b'{"a":"\\\\","b":' + b"[" * 33 + b"]" * 33 + b"}", True),
        (b'{"a":"\\"[","b":' + b"[" * 31 + b"]" * 31 + b"}", False),
        # Wide is not deep.
        (b"[" + b"[],{}," * 5000 + b"1]", False),
    ],
)
def test_nesting_is_measured_without_parsing(body: bytes, deeper: bool) -> None:
    assert nested_deeper_than(body, 32) is deeper
