"""Stored record formats (bridge/store/wire.py): records written by earlier versions still decode,
and records written now are byte for byte what those versions wrote.

The literals below were copied from the output of the hand-written orjson codecs this module
replaced, under the identity key KEY.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from bridge import keyed
from bridge.compliance.requests import ComplianceRequest
from bridge.delivery.deadletters import DeadLetter
from bridge.delivery.deliver import RetryState
from bridge.delivery.outbox import OutboxEntry
from bridge.store import wire
from bridge.store.wire import Envelope

KEY = b"wire-test-key"
SHOP = "s1.myshopify.com"

ENV_FULL = (
    b'{"s":"s1.myshopify.com","t":"orders/create","w":"wh-1","ta":"2026-11-28T19:33:24.123Z",'
    b'"v":"2025-01","e":"ev-1","r":1764358404123,"c":"0a1b2c3d4e5f"}\n'
    b'{"id":1,"note":"caf\xc3\xa9\\n"}\n'
)
ENV_MIN = (
    b'{"s":"s1.myshopify.com","t":"carts/update","w":"wh-2","ta":null,"v":null,"e":null,"r":0,'
    b'"c":null}\n'
)
# As queued before envelopes carried their claim (issue 19): still read, with none.
ENV_UNCLAIMED = (
    b'{"s":"s1.myshopify.com","t":"orders/create","w":"wh-1","ta":"2026-11-28T19:33:24.123Z",'
    b'"v":"2025-01","e":"ev-1","r":1764358404123}\n{"id":1,"note":"caf\xc3\xa9\\n"}\n'
)
OUT_FULL = (
    b'{"r":1764358404123,"p":"191167","h":"84adb232026d8cb6",'
    b'"g":["cb:{s1.myshopify.com}:st:cart:t1"],"k":"alias","e":"Order Completed"}\n'
    b'{"type":"track","event":"Order Completed","messageId":"m1"}'
)
OUT_MIN = b'{"r":0,"p":"","h":"bd058c5240400aef"}\n{"type":"identify","userId":"a@b.co"}'
DL_CALL = (
    b'{"id":"c-m2","kind":"call","shop":"s1.myshopify.com","reason":"refused","status":400,'
    b'"response":"bad \xe2\x80\xa8 request","attempts":3,"first_error_ms":10,"last_error_ms":20,'
    b'"event":"X","message_id":"m2","topic":"","webhook_id":"","payload":"{\\"r\\":5,'
    b'\\"p\\":\\"p\xc3\xa9\\",\\"h\\":\\"b3cc3d8143ff1ae8\\"}\\n{\\"type\\":\\"track\\",'
    b'\\"event\\":\\"X\\",\\"messageId\\":\\"m2\\"}"}'
)
DL_HOOK = (
    b'{"id":"w-wh-9","kind":"webhook","shop":"s1.myshopify.com",'
    b'"reason":"mapping failed: KeyError","status":null,"response":"","attempts":1,'
    b'"first_error_ms":0,"last_error_ms":0,"event":"","message_id":"","topic":"orders/paid",'
    b'"webhook_id":"wh-9","payload":"{\\"s\\":\\"x\\"}\\n\xef\xbf\xbd\xef\xbf\xbdbody"}'
)
CR_FULL = (
    b'{"t":"customers/redact","s":"s1.myshopify.com","w":"wh-3","r":1764358404123,"c":"191167",'
    b'"e":"a@b.co","p":["+16135550123","613-555-0123","6135550123"],"o":["1001","1002"],'
    b'"d":null}'
)
CR_MIN = (
    b'{"t":"shop/redact","s":"s1.myshopify.com","w":"wh-4","r":0,"c":null,"e":null,"p":[],'
    b'"o":[],"d":null}'
)
RS_STATUS = b'{"n":2,"first":1000,"last":3000,"s":503}'
RS_NONE = b'{"n":1,"first":1000,"last":2000,"s":null}'


@pytest.fixture(autouse=True)
def identity_key() -> Iterator[None]:
    before = keyed._key
    keyed.configure(KEY)
    yield
    keyed.configure(before)


def test_envelopes_round_trip_byte_for_byte() -> None:
    full = Envelope(
        SHOP,
        "orders/create",
        "wh-1",
        b'{"id":1,"note":"caf\xc3\xa9\\n"}\n',
        triggered_at="2026-11-28T19:33:24.123Z",
        api_version="2025-01",
        event_id="ev-1",
        received_ms=1764358404123,
        claim="0a1b2c3d4e5f",
    )
    bare = Envelope(SHOP, "carts/update", "wh-2", b"")
    assert Envelope.decode(ENV_FULL) == full
    assert Envelope.decode(ENV_MIN) == bare
    assert full.encode() == ENV_FULL
    assert bare.encode() == ENV_MIN
    assert Envelope.decode(ENV_UNCLAIMED) == msgspec.structs.replace(full, claim=None)


def test_outbox_entries_round_trip_byte_for_byte() -> None:
    full = OutboxEntry(
        b'{"type":"track","event":"Order Completed","messageId":"m1"}',
        1764358404123,
        "191167",
        ("cb:{s1.myshopify.com}:st:cart:t1",),
        "alias",
        "Order Completed",
        "84adb232026d8cb6",
    )
    bare = OutboxEntry(b'{"type":"identify","userId":"a@b.co"}', 0, "", (), "batch", "", "")
    assert OutboxEntry.decode(OUT_FULL) == full
    assert OutboxEntry.decode(OUT_MIN) == bare._replace(person_hash="bd058c5240400aef")
    assert full.encode() == OUT_FULL
    assert full._replace(person_hash="").encode() == OUT_FULL  # "h" filled in by encode
    assert bare.encode() == OUT_MIN


def test_a_batch_entry_built_at_run_time_leaves_its_kind_out() -> None:
    # A kind that equals "batch" but is another string object (decoded from Redis, or joined at
    # run time): msgspec omits a default by identity, so encode must pass the default itself.
    kind = "".join(["bat", "ch"])
    assert kind == "batch" and kind is not wire.BATCH
    entry = OutboxEntry(b"{}", 1, "191167", (), kind, "", "84adb232026d8cb6")
    assert entry.encode() == b'{"r":1,"p":"191167","h":"84adb232026d8cb6"}\n{}'
    assert OutboxEntry.decode(entry.encode()) == entry


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # Every header an earlier version wrote: no "h" (before the keyed person hash), no "e"
        # (before the event was named), no "k" (before aliases), no "g" (no guard).
        (b'{"r":1,"p":"191167"}', OutboxEntry(b"{}", 1, "191167")),
        (b'{"r":1,"p":"191167","g":["k1","k2"]}', OutboxEntry(b"{}", 1, "191167", ("k1", "k2"))),
        (b'{"r":1,"p":"191167","k":"alias"}', OutboxEntry(b"{}", 1, "191167", (), "alias")),
        (b'{"r":1,"p":"191167","e":"X"}', OutboxEntry(b"{}", 1, "191167", event="X")),
        (
            b'{"r":1,"p":"191167","h":"84adb232026d8cb6"}',
            OutboxEntry(b"{}", 1, "191167", person_hash="84adb232026d8cb6"),
        ),
        # A key a later version may add is ignored.
        (b'{"r":1,"p":"191167","z":[1]}', OutboxEntry(b"{}", 1, "191167")),
    ],
)
def test_outbox_headers_of_every_version_decode(header: bytes, expected: OutboxEntry) -> None:
    assert OutboxEntry.decode(header + b"\n{}") == expected


def test_an_entry_without_a_keyed_hash_keeps_the_name_the_take_script_gives_it() -> None:
    legacy = OutboxEntry.decode(b'{"r":1,"p":"191167"}\n{}')
    assert legacy.hold_name() == "56c2294b2258cb09" == keyed.legacy_person_hash("191167")
    assert OutboxEntry.decode(OUT_FULL).hold_name() == "84adb232026d8cb6"


def test_dead_letters_round_trip_byte_for_byte() -> None:
    call = DeadLetter(
        id="c-m2",
        kind="call",
        shop=SHOP,
        reason="refused",
        payload=(
            b'{"r":5,"p":"p\xc3\xa9","h":"b3cc3d8143ff1ae8"}\n'
            b'{"type":"track","event":"X","messageId":"m2"}'
        ),
        status=400,
        response="bad \u2028 request",
        attempts=3,
        first_error_ms=10,
        last_error_ms=20,
        event="X",
        message_id="m2",
    )
    hook = DeadLetter(
        id="w-wh-9",
        kind="webhook",
        shop=SHOP,
        reason="mapping failed: KeyError",
        payload='{"s":"x"}\n\ufffd\ufffdbody'.encode(),
        topic="orders/paid",
        webhook_id="wh-9",
    )
    assert DeadLetter.decode(DL_CALL) == call
    assert DeadLetter.decode(DL_HOOK) == hook
    assert call.encode() == DL_CALL
    assert hook.encode() == DL_HOOK


def test_a_dead_letter_missing_keys_gets_the_old_fallbacks() -> None:
    raw = b'{"payload":"x","attempts":0}'
    letter = DeadLetter.decode(raw)
    assert letter.id.startswith("x-") and letter.kind == "call" and letter.attempts == 1
    assert letter.payload == b"x" and letter.status is None


def test_compliance_requests_round_trip_byte_for_byte() -> None:
    full = ComplianceRequest(
        "customers/redact",
        SHOP,
        "wh-3",
        1764358404123,
        "191167",
        "a@b.co",
        ("+16135550123", "613-555-0123", "6135550123"),
        ("1001", "1002"),
        None,
    )
    bare = ComplianceRequest("shop/redact", SHOP, "wh-4")
    assert ComplianceRequest.decode(CR_FULL) == full
    assert ComplianceRequest.decode(CR_MIN) == bare
    assert full.encode() == CR_FULL
    assert bare.encode() == CR_MIN


@pytest.mark.parametrize("raw", [b"not json", b'{"s":"x","w":"y"}', b"[1]"])
def test_an_unreadable_compliance_request_raises_a_decode_error(raw: bytes) -> None:
    # The erasure drops such a record (erasure.run_pending catches msgspec.DecodeError).
    with pytest.raises(msgspec.DecodeError):
        ComplianceRequest.decode(raw)


def test_retry_states_round_trip_byte_for_byte() -> None:
    assert RetryState.decode(RS_STATUS) == RetryState(2, 1000)
    assert RetryState.decode(RS_NONE) == RetryState(1, 1000)
    assert RetryState.decode(None) == RetryState() == RetryState.decode(b"")
    assert RetryState(2, 1000).encode(3000, 503) == RS_STATUS
    assert RetryState(1, 1000).encode(2000, None) == RS_NONE


def test_framing_splits_at_the_first_newline() -> None:
    assert wire.unframe(wire.frame(b"{}", b"a\nb")) == (b"{}", b"a\nb")
    assert wire.unframe(b"{}") == (b"{}", b"")


def test_an_outbox_entry_carries_its_webhook_topic_and_older_ones_read_without_it() -> None:
    """The topic ("w") names, in the ops ledger, the webhook a settled call came from; an entry
    queued before it was added decodes with none (and the Lua take reads only "h" and "p")."""
    entry = OutboxEntry(b'{"type":"track"}', 5, "p1", (), "batch", "e", "", "checkouts/update")
    raw = entry.encode()
    assert b'"w":"checkouts/update"' in raw.partition(b"\n")[0]
    assert OutboxEntry.decode(raw).topic == "checkouts/update"
    assert OutboxEntry.decode(OUT_FULL).topic == ""
