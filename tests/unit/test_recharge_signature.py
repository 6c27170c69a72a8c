"""Recharge signatures (`signature.verify_recharge`): the timestamped HMAC when its header is
present, else the legacy plain hash; only the exact bytes, the right secret and a timestamp
within 48 h pass. Expected values are computed here from the documented construction (hmac and
hashlib), never with the code under test, plus known answers computed outside the code base."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.signature import verify_recharge

SECRET = b"whsec-rc-0123"
T = 1767225600  # 2026-01-01T00:00:00Z
NOW = T + 60
HOUR = 3600

# Known answers, computed with openssl outside this code base (the body has a non-ASCII byte):
#   B='{"charge":{"id":386976017,"status":"error","note":"café"}}'
#   printf '%s' "1767225600.$B" | openssl dgst -sha256 -hmac 'whsec-rc-0123'
#   printf '%s' "whsec-rc-0123$B" | openssl dgst -sha256
KNOWN_BODY = b'{"charge":{"id":386976017,"status":"error","note":"caf\xc3\xa9"}}'
KNOWN_V1 = "66f3e71998c051b3de51d1451821d0591b20f1ec9548b0a2176b5762ca0d6c2a"
KNOWN_LEGACY = "8d28698362da1fb710ac283ea3f65b8e07c3daa6ec59fbdab6cf0024a29c024c"
# The empty body: printf '%s' "1767225600." | openssl dgst -sha256 -hmac 'whsec-rc-0123'
EMPTY_V1 = "25fac371898f7d27150d6295e08ad025999dfdc7ba9e4fe13ae70f9cd30a281b"
# printf '%s' "whsec-rc-0123" | openssl dgst -sha256
EMPTY_LEGACY = "9d45db5dcbc97ed36ec799134566a0ea315bc306675d88dbfba3a3a6c394a14f"


def v1_of(body: bytes, t: int | str, secret: bytes = SECRET) -> str:
    return hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def legacy_of(body: bytes, secret: bytes = SECRET) -> str:
    return hashlib.sha256(secret + body).hexdigest()


def check(
    body: bytes,
    signature: str | None = None,
    timestamp: str | None = None,
    legacy: str | None = None,
    secret: bytes = SECRET,
    now: float = NOW,
) -> str | None:
    verdict = verify_recharge(
        body, signature=signature, timestamp=timestamp, legacy=legacy, secret=secret, now_s=now
    )
    assert verdict.valid == (verdict.problem is None)
    return verdict.problem


@pytest.mark.parametrize(
    ("body", "v1", "legacy"),
    [(KNOWN_BODY, KNOWN_V1, KNOWN_LEGACY), (b"", EMPTY_V1, EMPTY_LEGACY)],
    ids=["charge-body", "empty-body"],
)
def test_known_answers(body: bytes, v1: str, legacy: str) -> None:
    assert v1_of(body, T) == v1 and legacy_of(body) == legacy  # the helpers agree with openssl
    verdict = verify_recharge(
        body, signature=f"t={T},v1={v1}", timestamp=str(T), legacy=None, secret=SECRET, now_s=NOW
    )
    assert verdict.valid and verdict.signed_at == T
    legacy_verdict = verify_recharge(
        body, signature=None, timestamp=None, legacy=legacy, secret=SECRET, now_s=NOW
    )
    assert legacy_verdict.valid and legacy_verdict.signed_at is None
    assert check(body, f"t={T},v1={v1}", secret=SECRET + b"x") == "mismatch"
    assert check(body, legacy=legacy, secret=SECRET + b"x") == "mismatch"


def test_the_legacy_header_is_a_plain_hash_not_an_hmac() -> None:
    body = b'{"customer":{"id":1}}'
    as_hmac = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert check(body, legacy=as_hmac) == "mismatch"
    assert check(body, legacy=hashlib.sha256(body + SECRET).hexdigest()) == "mismatch"
    assert check(body, legacy=legacy_of(body)) is None
    assert check(body, legacy=legacy_of(body).upper()) is None  # hex, either case


@given(st.binary(max_size=2048), st.integers(min_value=NOW - 47 * HOUR, max_value=NOW + 299))
def test_a_signed_body_within_the_window_verifies(body: bytes, t: int) -> None:
    assert check(body, f"t={t},v1={v1_of(body, t)}", str(t)) is None


@given(st.binary(min_size=1, max_size=1024), st.data())
def test_any_flipped_byte_fails_both_schemes(body: bytes, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(body) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = body[:i] + bytes([body[i] ^ (1 << bit)]) + body[i + 1 :]
    assert check(tampered, f"t={T},v1={v1_of(body, T)}") == "mismatch"
    assert check(tampered, legacy=legacy_of(body)) == "mismatch"


def test_the_timestamp_is_signed() -> None:
    body = b'{"subscription":{"id":1}}'
    v1 = v1_of(body, T)
    assert check(body, f"t={T + 1},v1={v1}") == "mismatch"
    assert check(body, f"v1={v1}", str(T)) is None  # t from the timestamp header alone
    assert check(body, f"v1={v1}", str(T + 1)) == "mismatch"
    assert check(body, f"t={T},v1={v1}", str(T + 1)) == "mismatch"  # the headers disagree
    assert check(body, f"v1={v1}") == "mismatch"  # no timestamp at all


def test_timestamps_older_than_48_hours_or_ahead_of_the_clock_are_refused() -> None:
    body = b'{"charge":{"id":1}}'

    def at(t: int) -> str | None:
        return check(body, f"t={t},v1={v1_of(body, t)}", str(t), now=T)

    assert at(T - 47 * HOUR) is None
    assert at(T - 48 * HOUR) is None
    assert at(T - 48 * HOUR - 1) == "expired"
    assert at(T - 49 * HOUR) == "expired"
    assert at(T + 300) is None
    assert at(T + 301) == "expired"
    assert at(T + 48 * HOUR) == "expired"


def test_the_timestamped_scheme_wins_and_never_falls_back() -> None:
    body = b'{"charge":{"id":1}}'
    good_legacy = legacy_of(body)
    assert check(body, f"t={T},v1={'0' * 64}", legacy=good_legacy) == "mismatch"
    old = T - 49 * HOUR
    assert check(body, f"t={old},v1={v1_of(body, old)}", legacy=good_legacy) == "expired"
    # A timestamp header without a signature header says nothing: the legacy hash decides.
    assert check(body, None, str(T), legacy=good_legacy) is None


def test_headers_are_read_by_key_with_room_for_later_schemes() -> None:
    body = b'{"charge":{"id":1}}'
    v1 = v1_of(body, T)
    assert check(body, f" v1={v1} , t={T} ,v2=abc") is None
    assert check(body, f"t={T},v1={'ab' * 32},v1={v1}") is None  # any v1 may match
    assert check(body, f"t={T},v1={v1.upper()}") is None


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        "garbage",
        "t=,v1=",
        f"t={T}",
        f"t=abc,v1={'0' * 64}",
        f"t={T},v1=zz",
        f"t={T},v1={'0' * 63}",
        f"t=-{T},v1={'0' * 64}",
        f"t={T}.5,v1={'0' * 64}",
        "t=99999999999999999999,v1=00",
        "t=١٢٣,v1=00",
        "t=\x00,v1=\udc00",
        f"t=\udc00,v1={'0' * 64}",
    ],
)
def test_garbage_signature_headers_fail_quietly(header: str) -> None:
    problem = check(b"{}", header, legacy=legacy_of(b"{}"))
    # A blank header counts as absent (the legacy hash then decides); anything else fails.
    assert problem is None if not header.strip() else problem == "mismatch"


@pytest.mark.parametrize("header", ["", "zz", "0" * 64, legacy_of(b"{}")[:-1], "é" * 64])
def test_garbage_legacy_headers_fail_quietly(header: str) -> None:
    assert check(b"{}", legacy=header) in ("missing", "mismatch")


def test_no_header_is_missing() -> None:
    assert check(b"{}") == "missing"
    assert check(b"{}", None, str(T)) == "missing"
