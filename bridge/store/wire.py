"""The formats of the records the bridge stores in Redis, as msgspec Structs with their codecs.

Every record is JSON with the short key names it has always had: they are a deployed contract
(Redis holds records written by every earlier version) and Lua reads some of them with cjson, so
a key is never renamed and a new field needs a default. Each Struct maps its domain field names
to the stored keys; `omit_defaults` marks the records whose optional keys are left out.

    record              stored in                      shape
    Envelope            cb:{shop}:in, in:work          EnvelopeHeader line + raw webhook body
    OutboxEntry         cb:{shop}:out, out:work,       OutboxHeader line + the call's JSON
                        out:held:<hold name>
    DeadLetter          cb:{shop}:dlq (hash values)    DeadLetterRecord
    ComplianceRequest   cb:{shop}:compliance           ComplianceRecord
    RetryState          cb:{shop}:out:meta (values)    RetryRecord

Envelope and OutboxEntry are framed (`frame`, `unframe`): a one-line JSON header, a newline,
then the payload exactly as received or as it will be sent, never re-escaped.

Readers of these keys outside this module, to keep in step:
- Lua `TAKE_OUTBOX` (store/scripts.py) reads an outbox header's "h" (the keyed person
  hash, `keyed.person_hash(p)`: the entry's hold name) and "p" (the person), and names an entry
  without "h" `sha1(p)[:16]` as `hold_name` does.
- `envelope_topic` (the erasure keeps compliance envelopes) reads an envelope header's "t";
  `bridge dlq show` prints a parked webhook's header as stored.
No Lua reads envelope headers, dead letters, compliance requests or retry state.

Decoders raise `msgspec.DecodeError` (a ValueError) on a record they cannot read.
"""

from __future__ import annotations

import msgspec

from bridge import keyed

NEWLINE = b"\n"


def frame(header: bytes, payload: bytes) -> bytes:
    """A framed record: the header's JSON on one line (JSON never holds a raw newline), then
    the payload."""
    return header + NEWLINE + payload


def unframe(raw: bytes) -> tuple[bytes, bytes]:
    """(header, payload) of a framed record; a record without a newline is all header."""
    header, _, payload = raw.partition(NEWLINE)
    return header, payload


class Record(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=False):
    """Base of the stored formats: immutable, not tracked by the garbage collector (a record
    holds only strings and numbers, so no cycle), and a key a later version adds is ignored, so
    a rollback still reads what that version wrote. Subclasses inherit these options
    (`frozen=True` is repeated on each for mypy)."""


class EnvelopeHeader(Record, frozen=True):
    """An envelope's header line; every key is always written (unset ones as null)."""

    shop: str = msgspec.field(name="s")
    topic: str = msgspec.field(name="t")
    webhook_id: str = msgspec.field(name="w")
    triggered_at: str | None = msgspec.field(name="ta", default=None)
    api_version: str | None = msgspec.field(name="v", default=None)
    event_id: str | None = msgspec.field(name="e", default=None)
    received_ms: int = msgspec.field(name="r", default=0)
    claim: str | None = msgspec.field(name="c", default=None)


# The default kind of an outbox entry. msgspec's omit_defaults compares a string with its default
# by identity: `encode_outbox_entry` swaps an equal string (decoded, or built at run time) for
# this very object, so the header leaves "k" out as every version did.
BATCH = "batch"


class OutboxHeader(Record, frozen=True, omit_defaults=True):
    """An outbox entry's header line; mirrored by the Lua `scripts.TAKE_OUTBOX` (module doc).

    "r" and "p" are always written (every version did); "h" is written by every version since
    the keyed person hash (older entries have none); "g", "k" and "e" only when set ("k" is
    left out for "batch"; "e" came later, so older entries have none).
    """

    received_ms: int = msgspec.field(name="r")
    person: str = msgspec.field(name="p")
    person_hash: str = msgspec.field(name="h", default="")
    guards: tuple[str, ...] = msgspec.field(name="g", default=())
    kind: str = msgspec.field(name="k", default=BATCH)
    event: str = msgspec.field(name="e", default="")
    # The webhook topic that produced the call ("w", for the ops ledger's entry when delivery
    # settles the call; entries queued before it was added have none).
    topic: str = msgspec.field(name="w", default="")


def hold_name(person_hash: str, person: str) -> str:
    """The name delivery's retry bookkeeping gives an outbox entry's person: the header's keyed
    hash, or for an entry queued before headers carried one, the unkeyed name `scripts.TAKE_OUTBOX`
    gives it too (both sides must agree, or a person's order breaks)."""
    return person_hash or keyed.legacy_person_hash(person)


class DeadLetterRecord(Record, frozen=True):
    """A dead letter as stored; every key is always written. `payload` is the outbox entry or
    envelope as UTF-8 text (invalid bytes replaced)."""

    id: str = ""
    kind: str = ""
    shop: str = ""
    reason: str = ""
    status: int | None = None
    response: str = ""
    attempts: int = 1
    first_error_ms: int = 0
    last_error_ms: int = 0
    event: str = ""
    message_id: str = ""
    topic: str = ""
    webhook_id: str = ""
    payload: str = ""


class ComplianceRecord(Record, frozen=True):
    """A compliance request as stored; every key is always written (unset ones as null)."""

    topic: str = msgspec.field(name="t")
    shop: str = msgspec.field(name="s")
    webhook_id: str = msgspec.field(name="w")
    received_ms: int = msgspec.field(name="r", default=0)
    customer_id: str | None = msgspec.field(name="c", default=None)
    email: str | None = msgspec.field(name="e", default=None)
    phones: tuple[str, ...] = msgspec.field(name="p", default=())
    order_ids: tuple[str, ...] = msgspec.field(name="o", default=())
    data_request_id: str | None = msgspec.field(name="d", default=None)


class RetryRecord(Record, frozen=True):
    """One waiting person's retry state; every key is always written. Delivery reads back only
    "n" and "first"; "last" and "s" are for people reading Redis."""

    attempts: int = msgspec.field(name="n", default=0)
    first_ms: int = msgspec.field(name="first", default=0)
    last_ms: int = msgspec.field(name="last", default=0)
    status: int | None = msgspec.field(name="s", default=None)


# Built once: an Encoder serves every type, a Decoder is bound to one.
_encode = msgspec.json.Encoder().encode
_envelope_header = msgspec.json.Decoder(EnvelopeHeader).decode
_outbox_header = msgspec.json.Decoder(OutboxHeader).decode
_dead_letter = msgspec.json.Decoder(DeadLetterRecord).decode
_compliance = msgspec.json.Decoder(ComplianceRecord).decode
_retry = msgspec.json.Decoder(RetryRecord).decode


class Envelope(msgspec.Struct, frozen=True, gc=False):
    """A verified webhook as queued: the headers the worker needs and the exact raw body.

    A Struct (not encoded itself: see `EnvelopeHeader`) because the drain builds one per webhook.
    """

    shop: str
    topic: str
    webhook_id: str
    body: bytes
    triggered_at: str | None = None
    api_version: str | None = None
    event_id: str | None = None
    received_ms: int = 0
    # The token its webhook id's seen-marker was set to when this copy was queued (`Store.accept`):
    # the drain processes the copy the marker names and skips the others. None: not claimed on
    # the way in (backfill, a replay, an envelope queued by an older version).
    claim: str | None = None

    def encode(self) -> bytes:
        header = EnvelopeHeader(
            self.shop,
            self.topic,
            self.webhook_id,
            self.triggered_at,
            self.api_version,
            self.event_id,
            self.received_ms,
            self.claim,
        )
        return frame(_encode(header), self.body)

    @classmethod
    def decode(cls, raw: bytes) -> Envelope:
        """Raises msgspec.DecodeError when the header is not an envelope's."""
        header_raw, body = unframe(raw)
        h = _envelope_header(header_raw)
        return cls(
            h.shop,
            h.topic,
            h.webhook_id,
            body,
            h.triggered_at,
            h.api_version,
            h.event_id,
            h.received_ms,
            h.claim,
        )


def envelope_topic(raw: bytes) -> str | None:
    """The topic of `raw` when it is a framed envelope, else None (any other list entry, or
    bytes that are not a record at all: the erasure walks every list of a shop)."""
    header_raw, sep, _ = raw.partition(NEWLINE)
    if not sep or not header_raw.startswith(b"{"):
        return None
    try:
        return _envelope_header(header_raw).topic
    except msgspec.DecodeError:  # ValidationError is a DecodeError
        return None


def encode_outbox_entry(header: OutboxHeader, call: bytes) -> bytes:
    if header.kind == BATCH and header.kind is not BATCH:  # an equal string, not the default
        header = msgspec.structs.replace(header, kind=BATCH)
    return frame(_encode(header), call)


def decode_outbox_entry(raw: bytes) -> tuple[OutboxHeader, bytes]:
    """(header, call) of an outbox entry; raises msgspec.DecodeError."""
    header_raw, _, call = raw.partition(NEWLINE)  # `unframe`, inlined: one per call sent
    return _outbox_header(header_raw), call


def encode_dead_letter(record: DeadLetterRecord) -> bytes:
    return _encode(record)


def decode_dead_letter(raw: bytes) -> DeadLetterRecord:
    return _dead_letter(raw)


def encode_compliance_request(record: ComplianceRecord) -> bytes:
    return _encode(record)


def decode_compliance_request(raw: bytes) -> ComplianceRecord:
    return _compliance(raw)


def encode_retry_state(record: RetryRecord) -> bytes:
    return _encode(record)


def decode_retry_state(raw: bytes) -> RetryRecord:
    return _retry(raw)
