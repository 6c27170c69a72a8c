"""Commerce sources: each turns its platform's webhook payloads into `Mapped` (pure).

A second platform (or a subscription app) adds a module here implementing `Source`.
"""

from __future__ import annotations

from typing import Any, Protocol

from bridge.canonical import MapContext, Mapped


class MappingError(Exception):
    """The payload is signed but does not have the shape the mapping needs (parked, not retried)."""


class Source(Protocol):
    name: str

    def handles(self, topic: str) -> bool:
        """True when the topic produces canonical output (others are acknowledged and ignored)."""
        ...

    def map(self, topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
        """One payload -> candidate events and trait updates. Raises MappingError, nothing else."""
        ...
