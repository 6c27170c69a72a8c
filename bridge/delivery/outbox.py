"""Outbox entries: a one-line JSON header, then the call's JSON exactly as it will be sent (the
stored format is `wire.OutboxHeader`; bridge/store/wire.py names the Lua that reads it too).

The header carries what delivery needs and Pipelines must not see: when the webhook arrived
(end-to-end latency), whose call it is (per-person order) and that person's keyed hash (the name
of their retry bookkeeping, so that neither delivery nor the take script needs the key), and the
guards: state records whose existence means the call must no longer be sent (a cart converted
since the call was queued).
"""

from __future__ import annotations

from typing import NamedTuple

from bridge import keyed
from bridge.store import wire


class OutboxEntry(NamedTuple):
    """Immutable; a named tuple because delivery decodes one per call it sends."""

    call: bytes
    received_ms: int = 0
    person: str = ""
    guards: tuple[str, ...] = ()
    # "batch" goes in a /v1/batch request; "alias" is sent alone to /v1/alias, once the
    # person's earlier calls were accepted (header "k", left out for "batch").
    kind: str = "batch"
    # The event (track) or call type, for delivery's per-event counters without parsing the
    # call (header "e"; entries queued before it was added have none).
    event: str = ""
    # `keyed.person_hash(person)` (header "h"), computed by `encode` when left empty.
    person_hash: str = ""
    # The webhook topic that produced the call (header "w"; the ops ledger names it).
    topic: str = ""

    def encode(self) -> bytes:
        header = wire.OutboxHeader(
            self.received_ms,
            self.person,
            self.person_hash or keyed.person_hash(self.person),
            self.guards,
            self.kind,
            self.event,
            self.topic,
        )
        return wire.encode_outbox_entry(header, self.call)

    @classmethod
    def decode(cls, raw: bytes) -> OutboxEntry:
        """Raises msgspec.DecodeError when the header is not an outbox entry's."""
        h, call = wire.decode_outbox_entry(raw)
        return cls(call, h.received_ms, h.person, h.guards, h.kind, h.event, h.person_hash, h.topic)

    def hold_name(self) -> str:
        """This entry's person as delivery's retry bookkeeping names them (`wire.hold_name`)."""
        return wire.hold_name(self.person_hash, self.person)
