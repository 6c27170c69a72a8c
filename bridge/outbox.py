"""Outbox entries: a one-line JSON header, then the call's JSON exactly as it will be sent.

The header carries what delivery needs and Pipelines must not see: when the webhook arrived
(end-to-end latency), whose call it is (per-person order), and the guards: state records whose
existence means the call must no longer be sent (a cart converted since the call was queued).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(frozen=True)
class OutboxEntry:
    call: bytes
    received_ms: int = 0
    person: str = ""
    guards: tuple[str, ...] = ()
    kind: str = "batch"  # "alias": sent alone to /v1/alias, after everything before it

    def encode(self) -> bytes:
        head: dict[str, object] = {"r": self.received_ms, "p": self.person}
        if self.guards:
            head["g"] = list(self.guards)
        if self.kind != "batch":
            head["k"] = self.kind
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
        )
