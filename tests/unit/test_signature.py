"""Signature verification: only the exact bytes under a live secret pass."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.signature import sign, verify

SECRET = b"shpss_0123456789abcdef"

# Known answers, as literals computed outside this code base (never with the expression under
# test). A Shopify-like body with a non-ASCII byte, secret "hush":
#   printf '%s' '{"id":820982911946154508,"email":"jon@doe.ca","note":"café"}' \
#     | openssl dgst -sha256 -hmac 'hush' -binary | base64
KNOWN_BODY = b'{"id":820982911946154508,"email":"jon@doe.ca","note":"caf\xc3\xa9"}'
KNOWN_SIGNATURE = "lw5PY85NGkMvbPmaAhvjqsH269i1t3mUS5YiI6Uf5bo="
# RFC 4231 test case 2 (key "Jefe"): its published HMAC-SHA256 hex, base64-encoded with
#   echo 5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843 | xxd -r -p | base64
RFC4231_SIGNATURE = "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="
# The empty body, secret "hush": printf '' | openssl dgst -sha256 -hmac 'hush' -binary | base64
EMPTY_SIGNATURE = "Knm8rWjeSXNIt2H0AOMT7DQ8/YSy8sQi/pEjbuUmGMs="


@pytest.mark.parametrize(
    ("body", "secret", "expected"),
    [
        (KNOWN_BODY, b"hush", KNOWN_SIGNATURE),
        (b"what do ya want for nothing?", b"Jefe", RFC4231_SIGNATURE),
        (b"", b"hush", EMPTY_SIGNATURE),
    ],
    ids=["shopify-like", "rfc4231-case2", "empty-body"],
)
def test_known_answer(body: bytes, secret: bytes, expected: str) -> None:
    assert sign(body, secret) == expected
    assert verify(body, expected, [secret])
    assert verify(body, expected, [b"another-secret", secret])
    assert not verify(body, expected, [secret + b"x"])


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
