"""The dead-letter store: calls Pipelines refused or never accepted, and webhooks that cannot be
mapped, each kept in Redis with its payload and why, until replayed, purged or expired.

Layout per shop (one cluster hash tag, like every other key of the shop):
    cb:{shop}:dlq        hash   id -> record (JSON)
    cb:{shop}:dlq:idx    zset   id -> last error time (ms): listing, `--since`, retention

A record's id is derived from what it holds (`c-<messageId>` for a call, `w-<webhook id>` for a
webhook), so writing the same failure twice (a redo after a crash) keeps one record. Replay puts
the exact outbox entry (or envelope) back on its queue: the messageIds are the same, so a replay
is idempotent downstream. Replay moves what is stored when it commits, never a copy read before,
and not while an erasure of the shop runs: a letter an erasure removed never comes back. Records
are built by pure functions; `DeadLetters` does the I/O.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from bridge.delivery.outbox import OutboxEntry
from bridge.store import deadletters as letter_store
from bridge.store import wire
from bridge.store.deadletters import REPLAY_WAIT_S
from bridge.store.deadletters import ErasureRunning as ErasureRunning
from bridge.store.facade import Store
from bridge.store.keys import shop_keys

log = logging.getLogger(__name__)

MAX_RESPONSE_CHARS = 2048
MAX_SUMMARY_FIELDS = 30  # field names a dead letter's log line lists
KIND_CALL = "call"
KIND_WEBHOOK = "webhook"


def dlq_key(shop: str) -> str:
    return shop_keys(shop).dlq


def dlq_index_key(shop: str) -> str:
    return shop_keys(shop).dlq_index


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as stored; `payload` is the outbox entry or the envelope, exactly."""

    id: str
    kind: str
    shop: str
    reason: str
    payload: bytes
    status: int | None = None
    response: str = ""
    attempts: int = 1
    first_error_ms: int = 0
    last_error_ms: int = 0
    event: str = ""
    message_id: str = ""
    topic: str = ""
    webhook_id: str = ""

    def encode(self) -> bytes:
        record = wire.DeadLetterRecord(
            id=self.id,
            kind=self.kind,
            shop=self.shop,
            reason=self.reason,
            status=self.status,
            response=self.response[:MAX_RESPONSE_CHARS],
            attempts=self.attempts,
            first_error_ms=self.first_error_ms,
            last_error_ms=self.last_error_ms,
            event=self.event,
            message_id=self.message_id,
            topic=self.topic,
            webhook_id=self.webhook_id,
            payload=self.payload.decode("utf-8", "replace"),
        )
        return wire.encode_dead_letter(record)

    @classmethod
    def decode(cls, raw: bytes) -> DeadLetter:
        """Raises msgspec.DecodeError when `raw` is not a dead letter record."""
        d = wire.decode_dead_letter(raw)
        return cls(
            id=d.id or _fallback_id(raw),
            kind=d.kind or KIND_CALL,
            shop=d.shop,
            reason=d.reason,
            payload=d.payload.encode(),
            status=d.status,
            response=d.response,
            attempts=d.attempts or 1,
            first_error_ms=d.first_error_ms,
            last_error_ms=d.last_error_ms,
            event=d.event,
            message_id=d.message_id,
            topic=d.topic,
            webhook_id=d.webhook_id,
        )

    def stamped(self, now: int) -> DeadLetter:
        """The record with unset error times set to `now` (pure code leaves the clock out)."""
        if self.first_error_ms and self.last_error_ms:
            return self
        return replace(
            self,
            first_error_ms=self.first_error_ms or now,
            last_error_ms=self.last_error_ms or now,
        )

    def summary(self) -> dict[str, Any]:
        """What `dlq list` shows: everything but the payload and the response."""
        return {
            "id": self.id,
            "kind": self.kind,
            "shop": self.shop,
            "what": self.event or self.topic,
            "status": self.status,
            "attempts": self.attempts,
            "first_error_ms": self.first_error_ms,
            "last_error_ms": self.last_error_ms,
            "reason": self.reason,
        }


def _fallback_id(raw: bytes) -> str:
    return "x-" + hashlib.sha256(raw).hexdigest()[:24]


def call_name(call: bytes) -> tuple[str, str]:
    """(event or type, messageId) of a serialised call; empty strings if it is not JSON."""
    try:
        doc = orjson.loads(call)
    except orjson.JSONDecodeError:
        return "", ""
    if not isinstance(doc, dict):
        return "", ""
    return str(doc.get("event") or doc.get("type") or ""), str(doc.get("messageId") or "")


def call_letter(
    shop: str,
    entry: bytes,
    reason: str,
    *,
    status: int | None = None,
    response: str = "",
    attempts: int = 1,
    first_error_ms: int = 0,
    last_error_ms: int = 0,
) -> DeadLetter:
    """A dead letter for one outbox entry (header + call). Pure."""
    name, mid = call_name(OutboxEntry.decode(entry).call)
    return DeadLetter(
        id="c-" + (mid or hashlib.sha256(entry).hexdigest()[:24]),
        kind=KIND_CALL,
        shop=shop,
        reason=reason,
        payload=entry,
        status=status,
        response=response,
        attempts=attempts,
        first_error_ms=first_error_ms,
        last_error_ms=last_error_ms,
        event=name,
        message_id=mid,
    )


def webhook_letter(
    shop: str, envelope: bytes, topic: str, webhook_id: str, reason: str
) -> DeadLetter:
    """A dead letter for a signed webhook that cannot be mapped (a schema surprise). Pure."""
    return DeadLetter(
        id="w-" + (webhook_id or hashlib.sha256(envelope).hexdigest()[:24]),
        kind=KIND_WEBHOOK,
        shop=shop,
        reason=reason,
        payload=envelope,
        topic=topic,
        webhook_id=webhook_id,
    )


def call_summary(call: bytes) -> dict[str, Any]:
    """What a log line says of a call: its kind, size and field names, never its values (a
    call can be 32 KB and more, and its values are a shopper's)."""
    try:
        doc = orjson.loads(call)
    except orjson.JSONDecodeError:
        return {"bytes": len(call), "json": False}
    if not isinstance(doc, dict):
        return {"bytes": len(call), "json": False}
    fields = doc.get("properties") or doc.get("traits")
    names = sorted(str(k) for k in fields)[:MAX_SUMMARY_FIELDS] if isinstance(fields, dict) else []
    return {"type": str(doc.get("type"))[:16], "bytes": len(call), "fields": names}


def log_dead_letter(letter: DeadLetter) -> None:
    """The one log line a dead-lettered call or webhook gets: a summary, no payload, ever."""
    extra: dict[str, Any] = {
        "shop": letter.shop,
        "dead_letter": letter.id,
        "reason": letter.reason,
        "status": letter.status,
        "attempts": letter.attempts,
    }
    if letter.kind == KIND_CALL:
        extra.update(
            event=letter.event,
            message_id=letter.message_id,
            call=call_summary(OutboxEntry.decode(letter.payload).call),
        )
        log.error("call dead-lettered", extra=extra)
    else:
        extra.update(topic=letter.topic, webhook_id=letter.webhook_id)
        log.error("webhook dead-lettered", extra=extra)


def stage(pipe: Any, shop: str, letters: Iterable[DeadLetter | bytes], now: int) -> int:
    """Queue the writes of `letters` on a MULTI pipeline (the caller executes it)."""
    return letter_store.stage(
        pipe, shop, [DeadLetter.decode(i) if isinstance(i, bytes) else i for i in letters], now
    )


class DeadLetters:
    """Reads, replays and purges dead letters in the store. Raises StoreError."""

    def __init__(self, store: Store) -> None:
        self.letters = store.dead_letters

    def count(self, shop: str) -> int:
        return self.letters.count(shop)

    def ids(
        self, shop: str, since_ms: int | None = None, before_ms: int | None = None
    ) -> list[str]:
        return self.letters.ids(shop, since_ms, before_ms)

    def get_many(self, shop: str, ids: Sequence[str]) -> list[DeadLetter]:
        return [DeadLetter.decode(raw) for raw in self.letters.get_many(shop, ids)]

    def get(self, shop: str, letter_id: str) -> DeadLetter | None:
        raw = self.letters.get(shop, letter_id)
        return DeadLetter.decode(raw) if raw else None

    def newest(
        self, shops: Sequence[str], since_ms: int | None, n: int
    ) -> list[tuple[str, str, int]]:
        """The `n` newest letters of all `shops` since `since_ms`, newest first, as
        (shop, id, last error ms): read from the index only."""
        return self.letters.newest(shops, since_ms, n)

    def count_range(
        self, shops: Sequence[str], since_ms: int | None = None, before_ms: int | None = None
    ) -> int:
        return self.letters.count_range(shops, since_ms, before_ms)

    def count_stored(self, shop: str, ids: Sequence[str]) -> int:
        return self.letters.count_stored(shop, ids)

    def get_each(self, wanted: Sequence[tuple[str, str]]) -> list[DeadLetter]:
        """The letters of (shop, id) pairs still stored, in order."""
        return [DeadLetter.decode(raw) for raw in self.letters.get_each(wanted) if raw]

    def iter(self, shop: str, since_ms: int | None = None) -> Iterator[DeadLetter]:
        for chunk in _chunks(self.ids(shop, since_ms), 500):
            yield from self.get_many(shop, chunk)

    def replay(
        self, shop: str, letters: Sequence[DeadLetter], wait_s: float = REPLAY_WAIT_S
    ) -> int:
        """Put each of `letters` still stored back on its queue and drop it, in one MULTI;
        returns how many were.

        The records are read again under WATCH and their stored payloads moved, so a letter an
        erasure removed since the caller read it is not brought back; while an erasure of the
        shop runs, the replay waits (its erase may not have reached the letters yet, and a
        letter moved to a queue it already passed would escape it). Raises ErasureRunning
        past `wait_s`.

        Calls go to the end of the outbox, webhooks to the end of the inbound queue with their
        seen-markers removed (the drain marked them when it parked them; a replay is
        deliberate, so it must not be skipped as a duplicate). The caller wakes the shop's jobs.
        """
        return self.letters.replay(shop, [d.id for d in letters], _requeue, wait_s)

    def drop_orphans(self, shop: str) -> int:
        """Drop index entries whose record is gone (removed by an erasure, which finds records
        by what they hold); returns how many."""
        return self.letters.drop_orphans(shop)

    def purge(self, shop: str, ids: Sequence[str]) -> int:
        return self.letters.purge(shop, ids)

    def expire(self, shop: str, now: int, retention_s: int) -> int:
        """Drop letters whose last error is older than the retention; returns how many."""
        return self.letters.expire(shop, now, retention_s)


def _requeue(raw: bytes) -> letter_store.Requeue:
    letter = DeadLetter.decode(raw)
    queue = {KIND_CALL: letter_store.OUTBOX, KIND_WEBHOOK: letter_store.INBOUND}.get(letter.kind)
    return letter_store.Requeue(letter.id, letter.payload, queue or "", letter.webhook_id)


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
