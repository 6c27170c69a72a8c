"""Commerce sources: each turns its platform's webhook payloads into `Mapped` (pure).

A second platform (or a subscription app) adds a module here implementing `Source`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from pydantic import ValidationError

from bridge.canonical import MapContext, Mapped


class MappingError(Exception):
    """The payload is signed but does not have the shape the mapping needs (parked, not retried)."""


def validation_reason(topic: str, exc: ValidationError) -> str:
    """A payload's validation failure as a parking reason: the field path and the error type
    only (pydantic's messages and inputs may carry PII)."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0] if errors else {"loc": (), "type": "invalid"}
    where = ".".join(str(part) for part in first["loc"]) or "body"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{topic}: {where}: {first['type']}{more}"


class Source(Protocol):
    name: str

    def handles(self, topic: str) -> bool:
        """True when the topic produces canonical output (others are acknowledged and ignored)."""
        ...

    def map(self, topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
        """One payload -> candidate events and trait updates. Raises MappingError, nothing else."""
        ...


Mapper = Callable[[str, dict[str, Any], MapContext], Mapped]


class TopicTable:
    """A `Source` made of a table of mappers by topic: a topic not in it maps to an empty
    `Mapped` (acknowledged, ignored), a body that fails validation raises MappingError with
    the field path, never a value. Reasons name topics as `label` + topic."""

    name: str
    mappers: ClassVar[Mapping[str, Mapper]]
    label: ClassVar[str] = ""

    def handles(self, topic: str) -> bool:
        """True for topics with canonical output (others are acknowledged and ignored)."""
        return topic in self.mappers

    def map(self, topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
        """One payload -> canonical facts. Raises MappingError, nothing else."""
        mapper = self.mappers.get(topic)
        if mapper is None:
            return Mapped(source=self.name, topic=topic, skipped="topic not mapped")
        if not isinstance(body, dict):
            raise MappingError(f"{self.label}{topic}: body is not a JSON object")
        try:
            return mapper(topic, body, ctx)
        except ValidationError as exc:
            raise MappingError(validation_reason(self.label + topic, exc)) from None


class Sources:
    """Every source the bridge reads, as one `Source`: a topic goes to the source whose prefix
    it carries (`recharge/subscription/cancelled`), else to the default (Shopify, whose topics
    have no prefix). Envelopes name their topic this way, so one drain serves every source."""

    name = "sources"

    def __init__(self, default: Source, **prefixed: Source) -> None:
        self.default = default
        self.prefixed = {f"{prefix}/": source for prefix, source in prefixed.items()}

    def route(self, topic: str) -> tuple[Source, str]:
        """The source of an envelope topic, and the topic as that source names it."""
        head, sep, rest = topic.partition("/")
        source = self.prefixed.get(head + sep) if sep else None
        return (source, rest) if source is not None else (self.default, topic)

    def handles(self, topic: str) -> bool:
        source, own = self.route(topic)
        return source.handles(own)

    def map(self, topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
        source, own = self.route(topic)
        mapped = source.map(own, body, ctx)
        # Counters, parking and logs name the envelope's topic, prefix included.
        return mapped if own == topic else mapped.model_copy(update={"topic": topic})
