"""Outbox entries: a one-line JSON header, then the call's JSON exactly as it will be sent.

The header carries what delivery needs and Pipelines must not see: when the webhook arrived
(end-to-end latency), whose call it is (per-person order) and that person's keyed hash (the name
of their retry bookkeeping, so that neither delivery nor the take script needs the key), and the
guards: state records whose existence means the call must no longer be sent (a cart converted
since the call was queued).
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from bridge import keyed


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

    def encode(self) -> bytes:
        head: dict[str, object] = {
            "r": self.received_ms,
            "p": self.person,
            "h": self.person_hash or keyed.person_hash(self.person),
        }
        if self.guards:
            head["g"] = list(self.guards)
        if self.kind != "batch":
            head["k"] = self.kind
        if self.event:
            head["e"] = self.event
        return orjson.dumps(head) + b"\n" + self.call

    @classmethod
    def decode(cls, raw: bytes) -> OutboxEntry:
        head_raw, _, call = raw.partition(b"\n")
        head = orjson.loads(head_raw)
        return cls(
            call=call,
            received_ms=int(head.get("r") or 0),
            person=str(head.get("p") or ""),
            guards=tuple(head.get("g") or ()),
            kind=str(head.get("k") or "batch"),
            event=str(head.get("e") or ""),
            person_hash=str(head.get("h") or ""),
        )

    def hold_name(self) -> str:
        """This entry's person as delivery's retry bookkeeping names them: the header's keyed
        hash, or for an entry queued before headers carried one, the unkeyed name the take
        script gives it too (both sides must agree, or a person's order breaks)."""
        return self.person_hash or keyed.legacy_person_hash(self.person)
