"""messageIds and timestamps against plain reference encodings (hypothesis)."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from bridge.ids import iso_z, message_id, message_id_time

_TO_CROCKFORD = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)


def reference_message_id(at: datetime, *parts: str) -> str:
    """The ULID by the book: 48-bit ms time, 80 bits of the hash, RFC 4648 base32 re-lettered."""
    ms = int(at.timestamp() * 1000)
    if not 0 <= ms < 2**48:
        ms = 0
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    value = (ms << 80) | int.from_bytes(digest[:10], "big")
    encoded = base64.b32encode((value << 30).to_bytes(20, "big"))[:26].decode()
    return encoded.translate(_TO_CROCKFORD)


moments = st.datetimes(
    min_value=datetime(1000, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
)
offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@given(at=moments, offset=offsets, parts=st.lists(st.text(max_size=30), max_size=5))
def test_message_id_is_the_reference_ulid(at: datetime, offset: timezone, parts: list[str]) -> None:
    local = at.astimezone(offset)
    mid = message_id(local, *parts)
    assert mid == reference_message_id(local, *parts)
    if 0 <= at.timestamp() * 1000 < 2**48:
        assert abs(message_id_time(mid) - at) < timedelta(milliseconds=1)


@given(at=moments.filter(lambda d: d.year >= 1900), offset=offsets)
def test_iso_z_is_utc_with_milliseconds(at: datetime, offset: timezone) -> None:
    text = iso_z(at.astimezone(offset))
    expected = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
    assert text == expected


def _reference_iso_z(at: datetime) -> str:
    """iso_z as an f-string of the UTC time's fields (its form before datetime.isoformat)."""
    u = at if at.tzinfo is UTC else at.astimezone(UTC)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
        f".{u.microsecond // 1000:03d}Z"
    )


@given(
    at=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    offset=offsets,
)
def test_iso_z_is_the_field_by_field_reference_in_every_year(
    at: datetime, offset: timezone
) -> None:
    # Years before 1000 are zero-padded and microseconds truncated, never rounded.
    for moment in (at, at.astimezone(offset), at.replace(tzinfo=UTC)):
        assert iso_z(moment) == _reference_iso_z(moment)


def test_iso_z_pads_early_years_and_truncates_microseconds() -> None:
    assert iso_z(datetime(7, 3, 4, 5, 6, 7, 999_999, tzinfo=UTC)) == "0007-03-04T05:06:07.999Z"
    assert iso_z(datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-5)))) == (
        "2026-01-01T05:00:00.000Z"
    )


def test_message_ids_stay_the_reference_past_the_remembered_times() -> None:
    # The time digits are remembered by millisecond, and forgotten all at once when full:
    # ids before, across and after a forgetting are the reference ones.
    start = datetime(2026, 1, 1, tzinfo=UTC)
    moments = [start + timedelta(milliseconds=i) for i in range(3000)]
    for at in moments + moments[::-1]:
        assert message_id(at, "k", at.isoformat()) == reference_message_id(at, "k", at.isoformat())
    for at in (datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC)):  # time 0
        assert message_id(at, "x") == reference_message_id(at, "x")
