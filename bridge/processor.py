"""Turn a batch of queued webhooks into outbound calls and the state they change (no I/O).

The drain job loads the batch's state records in one round trip, calls `process`, and commits
the result atomically with the removal of the batch from the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import orjson

from bridge.calls import InvalidCall, validate_call
from bridge.canonical import MapContext, Mapped
from bridge.compliance import COMPLIANCE_TOPICS, request_from
from bridge.identity import Policy, decide, keys_for
from bridge.jsonio import parse_body
from bridge.outbox import OutboxEntry
from bridge.sources import MappingError, Source
from bridge.state import StateView
from bridge.store import Commit, Envelope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessConfig:
    shop_currency: str = "USD"
    skip_test_orders: bool = True
    naming: str = "snake"
    order_completed_on: str = "orders/paid"


def parse_time(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None


def park_record(env: Envelope, reason: str) -> bytes:
    """A webhook that cannot be mapped, kept with its reason (the body stays for replay)."""
    return orjson.dumps(
        {
            "kind": "webhook",
            "reason": reason,
            "topic": env.topic,
            "webhook_id": env.webhook_id,
            "received_ms": env.received_ms,
            "body": env.body.decode("utf-8", "replace"),
        }
    )


def map_envelope(env: Envelope, source: Source, config: ProcessConfig) -> Mapped:
    """Parse and map one webhook. Raises MappingError for anything it cannot read."""
    try:
        body = parse_body(env.body)
    except ValueError as exc:
        raise MappingError(f"body is not JSON: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise MappingError("body is not a JSON object")
    ctx = MapContext(
        shop=env.shop,
        shop_currency=config.shop_currency,
        skip_test_orders=config.skip_test_orders,
        triggered_at=parse_time(env.triggered_at),
        order_completed_on=config.order_completed_on,
    )
    return source.map(env.topic, body, ctx)


def process(
    shop: str,
    raw: list[bytes],
    *,
    source: Source,
    config: ProcessConfig,
    load: Callable[[list[str]], Mapping[str, bytes | None]],
    key_of: Callable[[str], str],
) -> Commit:
    """Map, resolve and validate a batch; `load` fetches state records by key in one call."""
    commit = Commit()
    mapped: list[tuple[Envelope, Mapped]] = []
    for item in raw:
        env = Envelope.decode(item)
        try:
            m = map_envelope(env, source, config)
        except MappingError as exc:
            log.warning(
                "webhook parked",
                extra={"topic": env.topic, "webhook_id": env.webhook_id, "reason": str(exc)},
            )
            commit.parked.append(park_record(env, str(exc)))
            commit.count(f"webhooks:{env.topic}:parked")
            continue
        mapped.append((env, m))
        if env.topic in COMPLIANCE_TOPICS:
            # Committed with the batch; the drain carries it out after the commit (issue 7).
            commit.compliance.append(request_from(env, m).encode())

    names = [n for _, m in mapped for n in keys_for(m)]
    view = StateView(dict(load([key_of(n) for n in names])), key_of=key_of)
    policy = Policy(shop=shop, naming=config.naming)
    for env, m in mapped:
        if m.skipped:
            commit.count(f"webhooks:{env.topic}:skipped")
            continue
        for out in decide(m, view, policy):
            call = out.call
            try:
                raw_call = validate_call(call)
            except InvalidCall as exc:
                commit.parked.append(
                    orjson.dumps({"kind": "call", "reason": str(exc), "call": call})
                )
                commit.count("calls:invalid")
                continue
            entry = OutboxEntry(raw_call, env.received_ms, out.person, out.guards)
            commit.calls.append(entry.encode())
            name = call.get("event") or call["type"]
            commit.count(f"events:{name}:queued")
        commit.count(f"webhooks:{env.topic}:processed")
    commit.state_set, commit.state_del = view.writes()
    return commit
