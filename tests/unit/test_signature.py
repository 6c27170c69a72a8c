"""Signature verification: only the exact bytes under a live secret pass."""

from __future__ import annotations

import base64
import hashlib
import hmac

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.signature import sign, verify

SECRET = b"shpss_0123456789abcdef"

# Known answer computed independently with `openssl dgst -sha256 -hmac key -binary | base64`.
KNOWN_BODY = b'{"id":820982911946154508}'


def test_known_answer() -> None:
    expected = base64.b64encode(hmac.new(b"key", KNOWN_BODY, hashlib.sha256).digest()).decode()
    assert sign(KNOWN_BODY, b"key") == expected
    assert verify(KNOWN_BODY, expected, [b"key"])


@given(st.binary(max_size=2048))
def test_signed_body_verifies(body: bytes) -> None:
    assert verify(body, sign(body, SECRET), [SECRET])


@given(st.binary(min_size=1, max_size=2048), st.data())
def test_any_flipped_byte_fails(body: bytes, data: st.DataObject) -> None:
    header = sign(body, SECRET)
    i = data.draw(st.integers(0, len(body) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = body[:i] + bytes([body[i] ^ (1 << bit)]) + body[i + 1 :]
    assert not verify(tampered, header, [SECRET])


@given(st.binary(max_size=512), st.binary(min_size=1, max_size=64))
def test_wrong_secret_fails(body: bytes, other: bytes) -> None:
    if other == SECRET:
        return
    assert not verify(body, sign(body, other), [SECRET])


@given(st.binary(max_size=512))
def test_any_of_several_secrets_passes(body: bytes) -> None:
    old, new = b"old-secret", b"new-secret"
    assert verify(body, sign(body, old), [new, old])
    assert verify(body, sign(body, new), [new, old])
    assert not verify(body, sign(body, b"third"), [new, old])


@settings(max_examples=200)
@given(st.text(max_size=80))
def test_garbage_headers_fail_quietly(header: str) -> None:
    assert not verify(b"{}", header, [SECRET])


def test_missing_header_fails() -> None:
    assert not verify(b"{}", None, [SECRET])
    assert not verify(b"{}", "", [SECRET])
    assert not verify(b"{}", sign(b"{}", SECRET), [])


@given(
    st.sampled_from([" ", "\n", "\t", "  \r\n"]),
    st.integers(min_value=2**63, max_value=2**64 - 1),
    st.text(alphabet="éü✓😀", min_size=1, max_size=5),
)
def test_signature_covers_raw_bytes_not_reserialised_json(ws: str, big: int, text: str) -> None:
    # Odd whitespace, \\u escapes and 19-digit integers: re-serialising would change the bytes.
    escaped = "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else c for c in text)
    body = f'{{{ws}"id":{ws}{big},"title":"{escaped}"{ws}}}'.encode()
    header = sign(body, SECRET)
    assert verify(body, header, [SECRET])
    import json

    assert not verify(json.dumps(json.loads(body)).encode(), header, [SECRET])
