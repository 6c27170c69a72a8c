"""What the ops console (bridge/web/ops/) reads, and the bounded records it needs written.

Three record families, all written inside MULTIs the bridge sends anyway (the drain's commit,
delivery's settle), so they cost Redis a few commands and the bridge no round trip:
- a per-person ledger of recent calls and their outcomes (`Keys.ledger(person hash)`, a list,
  newest first, at most LEDGER_CALLS entries, expiring LEDGER_KEEP_S after its last write);
- the shop's webhook log (`Keys.webhook_log`, a list, newest first, at most WEBHOOK_LOG_SIZE);
- webhooks processed per 5 minutes and per hour, one hash per UTC day
  (`Keys.webhook_buckets`), each expiring on its own.
Entries are small JSON objects holding no personal data: event names, messageIds, outcomes,
topics, webhook ids. The ledger is named by the keyed person hash (bridge/keyed.py), so an
erasure (compliance/erasure.py) removes it and an export carries it, by name.

The callers build the entries; this module names where they go and reads them back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson
import redis

from bridge.store.keys import Keys, ops_login_failures, shop_keys

LEDGER_CALLS = 50  # entries kept per person
LEDGER_KEEP_S = 30 * 86400  # a person's ledger goes this long after its last entry
WEBHOOK_LOG_SIZE = 500  # webhooks kept per shop
ALERT_HISTORY_SIZE = 200  # ended alerts kept per shop
FINE_S = 300
COARSE_S = 3600
DAY_S = 86400
FINE_KEEP_DAYS = 2  # 5-minute buckets: today's and yesterday's key, read for the last 24 h
COARSE_KEEP_DAYS = 30  # hourly buckets: 28 days on the chart, and the day it started in

# Ledger outcomes.
QUEUED = "queued"
DELIVERED = "delivered"
SUPPRESSED = "suppressed"
HELD = "held"  # waiting for a retry of delivery
WAITING = "waiting"  # held back by identity rules (a checkout waiting for its contact)
DEAD = "dead_lettered"


def ledger_entry(
    at_ms: int, event: str, outcome: str, *, message_id: str = "", reason: str = "", topic: str = ""
) -> bytes:
    """One ledger entry: when, which call (event or type, messageId), what became of it and
    why, and the webhook topic that produced it. No personal data goes in."""
    entry: dict[str, Any] = {"t": at_ms, "e": event, "o": outcome}
    if message_id:
        entry["m"] = message_id
    if reason:
        entry["r"] = reason[:200]
    if topic:
        entry["w"] = topic
    return orjson.dumps(entry)


def webhook_entry(
    at_ms: int,
    topic: str,
    webhook_id: str,
    result: str,
    *,
    calls: Mapping[str, int] | None = None,
    notes: Mapping[str, int] | None = None,
    reason: str = "",
) -> bytes:
    """One webhook log entry: when it arrived, its topic and id, the result (processed,
    duplicate, parked, skipped, stale...), the calls it produced by name, and what identity
    held back (`suppressed`, `waiting`)."""
    entry: dict[str, Any] = {"t": at_ms, "topic": topic, "id": webhook_id[:80], "r": result}
    if calls:
        entry["calls"] = dict(calls)
    if notes:
        entry["notes"] = dict(notes)
    if reason:
        entry["why"] = reason[:200]
    return orjson.dumps(entry)


def message_id_of(call: bytes) -> str:
    """A serialised call's messageId, found without parsing the call (delivery does this for
    every call it settles): the bridge's calls are rendered with `"messageId":"<ULID>"`."""
    at = call.find(b'"messageId":"')
    if at < 0:
        return ""
    start = at + 13
    end = call.find(b'"', start)
    return call[start:end].decode("ascii", "replace") if 0 < end - start <= 64 else ""


def ledger_commands(
    shop: str, entries: Iterable[tuple[str, bytes]], *, keep: int = LEDGER_CALLS, trim: bool = True
) -> list[tuple[Any, ...]]:
    """The commands that append `entries` ((person hash, entry), oldest first) to their
    people's ledgers: per person one LPUSH of at most `keep` entries, an LTRIM (unless the
    caller trims the ledgers the LPUSH took past `keep`: `long_ledgers`) and an EXPIRE."""
    people: dict[str, list[bytes]] = {}
    for person, entry in entries:
        if person:
            people.setdefault(person, []).append(entry)
    k = shop_keys(shop)
    out: list[tuple[Any, ...]] = []
    for person, items in people.items():
        key = k.ledger(person)
        out.append(("LPUSH", key, *items[-keep:]))
        if trim:
            out.append(("LTRIM", key, 0, keep - 1))
        out.append(("EXPIRE", key, LEDGER_KEEP_S))
    return out


def long_ledgers(
    shop: str, commands: Sequence[tuple[Any, ...]], replies: Sequence[Any], keep: int
) -> list[str]:
    """The ledgers an LPUSH among `commands` (`replies` answering them one for one) took past
    `keep` entries: the only ones that need an LTRIM."""
    prefix = shop_keys(shop).ledger_prefix
    return [
        command[1]
        for command, reply in zip(commands, replies, strict=True)
        if command[0] == "LPUSH"
        and command[1].startswith(prefix)
        and type(reply) is int
        and reply > keep
    ]


def webhook_log_commands(
    shop: str, entries: Sequence[bytes], *, trim: bool = True
) -> list[tuple[Any, ...]]:
    """Append `entries` (oldest first) to the shop's webhook log, capped by an LTRIM (unless
    the caller trims the log when the LPUSH took it past its size: `long_webhook_log`)."""
    if not entries:
        return []
    key = shop_keys(shop).webhook_log
    push: tuple[Any, ...] = ("LPUSH", key, *entries[-WEBHOOK_LOG_SIZE:])
    return [push, ("LTRIM", key, 0, WEBHOOK_LOG_SIZE - 1)] if trim else [push]


def long_webhook_log(
    shop: str, commands: Sequence[tuple[Any, ...]], replies: Sequence[Any]
) -> list[str]:
    """The shop's webhook log when an LPUSH among `commands` took it past WEBHOOK_LOG_SIZE."""
    key = shop_keys(shop).webhook_log
    return [
        key
        for command, reply in zip(commands, replies, strict=True)
        if command[0] == "LPUSH" and command[1] == key and type(reply) is int
        if reply > WEBHOOK_LOG_SIZE
    ]


_BUCKETS = (("5m", FINE_S, FINE_KEEP_DAYS), ("1h", COARSE_S, COARSE_KEEP_DAYS))


def webhook_counts(
    shop: str, received_ms: Iterable[int]
) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """Webhooks counted into their 5-minute and hourly buckets (by arrival time): the counts
    by (bucket key, bucket start) and when each bucket key may expire (epoch s)."""
    k = shop_keys(shop)
    # Counted by the second first: a backlog's batch arrived within a few seconds, and a
    # bucket's key and start cost two f-strings a webhook (2000 orders: 0.016 s -> 0.002 s of
    # cProfile). Buckets come in the order of their first webhook, as one by one.
    seconds: dict[int, int] = {}
    for ms in received_ms:
        if ms > 0:
            s = ms // 1000
            seconds[s] = seconds.get(s, 0) + 1
    counts: dict[tuple[str, str], int] = {}
    expiry: dict[str, int] = {}
    for s, n in seconds.items():
        day = s // DAY_S
        for size, width, keep in _BUCKETS:
            key = k.webhook_buckets(size, day)
            slot = (key, str(s // width * width))
            counts[slot] = counts.get(slot, 0) + n
            expiry[key] = (day + keep + 1) * DAY_S  # expires once past what is ever read
    return counts, expiry


def marks_commands(shop: str, marks: Mapping[str, int]) -> list[tuple[Any, ...]]:
    """Record when things last happened (`delivered` -> epoch ms)."""
    if not marks:
        return []
    k = shop_keys(shop)
    return [("HSET", k.ops_marks, *[x for name, v in marks.items() for x in (name, v)])]


class ShopHealth(NamedTuple):
    """One shop's delivery health, as Redis answered."""

    shop: str
    inbound: int
    outbox: int
    dead_letters: int
    waiting_people: int
    paused_ms: int | None
    last_delivered_ms: int | None
    alerts: dict[bytes, bytes]
    stats: dict[bytes, bytes]


class OpsStore:
    """The console's reads over one Redis client. Raises redis errors."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self.redis = client

    def health(self, shops: Sequence[str], *, stats: bool = False) -> list[ShopHealth]:
        """Every shop's queue depths, pause, waiting people, dead letters, last delivery and
        alerts, in one round trip (with `stats`, its counters too)."""
        pipe = self.redis.pipeline(transaction=False)
        for shop in shops:
            k = Keys(shop)
            pipe.llen(k.inbound)
            pipe.llen(k.inbound_work)
            pipe.llen(k.outbox)
            pipe.llen(k.outbox_work)
            pipe.hlen(k.dlq)
            pipe.zcard(k.out_due)
            pipe.get(k.paused)
            pipe.hget(k.ops_marks, "delivered")
            pipe.hgetall(k.alerts)
            if stats:
                pipe.hgetall(k.stats)
        replies = pipe.execute()
        width = 10 if stats else 9
        out: list[ShopHealth] = []
        for i, shop in enumerate(shops):
            r = replies[i * width : (i + 1) * width]
            out.append(
                ShopHealth(
                    shop=shop,
                    inbound=int(r[0]) + int(r[1]),
                    outbox=int(r[2]) + int(r[3]),
                    dead_letters=int(r[4]),
                    waiting_people=int(r[5]),
                    paused_ms=int(r[6]) if r[6] else None,
                    last_delivered_ms=int(r[7]) if r[7] else None,
                    alerts=r[8],
                    stats=r[9] if stats else {},
                )
            )
        return out

    def charts(
        self, shop: str, events: Sequence[str], now_s: int, days: int = 29
    ) -> tuple[list[tuple[dict[bytes, bytes], dict[bytes, bytes]]], list[bytes]]:
        """For the shop's chart page, in one round trip: each event's (5-minute, hourly)
        buckets, webhooks' own (5-minute and hourly merged over the days read) last, and the
        alerts that ended."""
        k = Keys(shop)
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.hgetall(k.volume_fine(event))
            pipe.hgetall(k.volume_coarse(event))
        today = now_s // DAY_S
        for day in range(today - FINE_KEEP_DAYS + 1, today + 1):
            pipe.hgetall(k.webhook_buckets("5m", day))
        for day in range(today - days, today + 1):
            pipe.hgetall(k.webhook_buckets("1h", day))
        pipe.lrange(k.alert_history, 0, -1)
        replies = pipe.execute()
        pairs = [(replies[2 * i], replies[2 * i + 1]) for i in range(len(events))]
        rest = replies[2 * len(events) : -1]
        fine: dict[bytes, bytes] = {}
        for part in rest[:FINE_KEEP_DAYS]:
            fine.update(part)
        coarse: dict[bytes, bytes] = {}
        for part in rest[FINE_KEEP_DAYS:]:
            coarse.update(part)
        pairs.append((fine, coarse))
        return pairs, list(replies[-1])

    def webhook_log(self, shop: str, n: int = WEBHOOK_LOG_SIZE) -> list[bytes]:
        """The shop's last `n` webhooks' entries, newest first."""
        return list(self.redis.lrange(Keys(shop).webhook_log, 0, max(0, n - 1)))

    def ledgers(self, shop: str, people: Sequence[str]) -> list[list[bytes]]:
        """Each person's ledger entries (by person hash), newest first, in one round trip."""
        if not people:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for person in people:
            pipe.lrange(Keys(shop).ledger(person), 0, -1)
        return [list(r) for r in pipe.execute()]

    def records(self, shop: str, names: Sequence[str]) -> dict[str, bytes | None]:
        """State records by name (`cart:<token>`...), in one round trip."""
        if not names:
            return {}
        k = Keys(shop)
        values = self.redis.mget([k.state(n) for n in names])
        return dict(zip(names, values, strict=True))

    def login_failures(self, client: str) -> int:
        """Wrong console logins from `client` within its current window."""
        return int(self.redis.get(ops_login_failures(client)) or 0)

    def note_login_failure(self, client: str, window_s: int) -> int:
        """Count one wrong login from `client`; the count goes `window_s` after the first."""
        key = ops_login_failures(client)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(key, 0, ex=window_s, nx=True)  # the window starts (INCR keeps the TTL)
        pipe.incr(key)
        return int(pipe.execute()[1])
