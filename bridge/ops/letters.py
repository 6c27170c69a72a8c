"""Dead letters as an operator handles them: find, show, replay, purge.

`bridge dlq` (cli/dlq.py) and the ops console (web/ops/) call these functions, so both do the
same thing: the records and their moves are delivery/deadletters.py's, the Redis side
store/deadletters.py's. Replay wakes the shop's jobs after moving its letters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from bridge.delivery.deadletters import KIND_CALL, DeadLetter, DeadLetters, ErasureRunning
from bridge.delivery.outbox import OutboxEntry
from bridge.logs import redact
from bridge.store import wire
from bridge.store.deadletters import REPLAY_WAIT_S
from bridge.store.keys import Keys

if TYPE_CHECKING:
    from bridge.services import Services

REPLAY_CHUNK = 200

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_AGE_MS = 10_000 * 365 * 86400 * 1000


def parse_time(text: str, now_ms: int) -> int:
    """Milliseconds since the epoch for an ISO time or an age before `now_ms` (`90m`, `6h`,
    `2d`); ValueError else."""
    m = _AGE.match(text.strip())
    if m:
        age_ms = float(m.group(1)) * _UNIT_S[m.group(2)] * 1000
        if age_ms > _MAX_AGE_MS:  # beyond any letter (and past float's range: inf)
            raise ValueError("that age is longer than ten thousand years")
        return now_ms - int(age_ms)
    when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


@dataclass(frozen=True)
class LetterFilter:
    """Which letters to list: since a time (ms), of an event or topic, with a status
    ("" any, "none" no HTTP status, else the status code as text)."""

    since_ms: int | None = None
    event: str = ""
    status: str = ""

    def admits(self, d: DeadLetter) -> bool:
        if self.event and (d.event or d.topic) != self.event:
            return False
        if self.status:
            shown = "none" if d.status is None else str(d.status)
            if shown != self.status:
                return False
        return True


def iter_letters(
    letters: DeadLetters, shops: Sequence[str], flt: LetterFilter = LetterFilter()
) -> Iterator[DeadLetter]:
    """The shops' letters the filter admits, shop by shop, oldest first."""
    for shop in shops:
        for d in letters.iter(shop, flt.since_ms):
            if flt.admits(d):
                yield d


# A filtered listing (by event or status) reads at most this many letters, the newest: a page
# costs the same however many letters are stored (an outage can leave hundreds of thousands).
LIST_SCAN = 2000
_READ_CHUNK = 200


@dataclass(frozen=True)
class Listing:
    """A page of letters: the newest the filter admits (newest first), how many letters the
    filter's time range holds in the shops asked, and how many of those were read to find
    them (the newest first)."""

    letters: list[DeadLetter]
    in_range: int
    read: int


def newest(
    letters: DeadLetters,
    shops: Sequence[str],
    flt: LetterFilter = LetterFilter(),
    *,
    limit: int,
    scan: int = LIST_SCAN,
) -> Listing:
    """The newest `limit` letters of `shops` the filter admits, reading at most `limit`
    letters (no event or status filter) or `scan` (with one), newest first."""
    in_range = letters.count_range(shops, flt.since_ms)
    budget = max(limit, scan) if (flt.event or flt.status) else limit
    candidates = letters.newest(shops, flt.since_ms, budget)
    found: list[DeadLetter] = []
    read = 0
    for i in range(0, len(candidates), _READ_CHUNK):
        chunk = candidates[i : i + _READ_CHUNK]
        read += len(chunk)
        found += [d for d in letters.get_each([(s, n) for s, n, _ in chunk]) if flt.admits(d)]
        if len(found) >= limit:
            break
    return Listing(found[:limit], in_range, read)


def find(letters: DeadLetters, shops: Sequence[str], letter_id: str) -> DeadLetter | None:
    """The letter `letter_id` in the first of `shops` that holds it."""
    for shop in shops:
        found = letters.get(shop, letter_id)
        if found is not None:
            return found
    return None


# Fields of a call whose values are a shopper's own: the console shows them redacted. Matched
# as whole words of the key (camelCase and snake_case alike), so that `browser_ip` is one and
# `shipping_lines`, `description` or `total_tip_received` (money, items) are not.
_PERSONAL = re.compile(
    r"(?:^|_)(?:e_?mails?|phones?|first_?name|last_?name|full_?name|addresse?s?\d*|street\d*|"
    r"city|zip|postal\w*|province\w*|country_code|birth\w*|ip|user_?agent|urls?|notes?|"
    r"company|latitude|longitude|recipients?)(?:_|$)"
)
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _personal_key(key: str) -> bool:
    if key.endswith(("_id", "Id")):
        return False
    return _PERSONAL.search(_CAMEL_HUMP.sub("_", key).lower()) is not None


REDACTED = "[redacted]"


def redact_call(value: Any, key: str = "") -> Any:
    """A call with every personal value replaced: fields named like personal data (emails,
    names, addresses, phones, URLs that may carry a checkout key), and emails or phones
    anywhere in other strings. Ids, event names, money and items stay."""
    if key and _personal_key(key):
        return REDACTED if value not in (None, "", [], {}) else value
    if isinstance(value, dict):
        return {k: redact_call(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_call(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def detail(d: DeadLetter, *, redacted: bool = False) -> dict[str, Any]:
    """One letter as `bridge dlq show` prints it: its summary, Pipelines' response, and the
    call (with its person) or the webhook; with `redacted`, personal values hidden."""
    out: dict[str, Any] = {**d.summary(), "response": d.response}
    if d.kind == KIND_CALL:
        entry = OutboxEntry.decode(d.payload)
        call = orjson.loads(entry.call)
        out["call"] = redact_call(call) if redacted else call
        out["person"] = REDACTED if redacted and entry.person else entry.person
    else:
        head, body = wire.unframe(d.payload)
        out["envelope"] = orjson.loads(head)
        text = body.decode("utf-8", "replace")
        if redacted:
            try:
                out["body"] = redact_call(orjson.loads(body))
            except orjson.JSONDecodeError:
                out["body"] = redact(text)
        else:
            out["body"] = text
    if redacted:
        out["response"] = redact(d.response)
        out["reason"] = redact(d.reason)
    return out


def replay_plan(
    letters: DeadLetters,
    shops: Sequence[str],
    *,
    ids: Sequence[str] = (),
    since_ms: int | None = None,
) -> list[tuple[str, list[str]]]:
    """Which letters a replay moves, per shop: the `ids` given (looked for in every shop),
    else every letter since `since_ms` (None: every letter). A preview counts these."""
    plan: list[tuple[str, list[str]]] = []
    for shop in shops:
        found = list(ids) if ids else letters.ids(shop, since_ms)
        plan.append((shop, found))
    return plan


def capped(plan: Sequence[tuple[str, list[str]]], n: int) -> list[tuple[str, list[str]]]:
    """The plan's first `n` letters (each shop's oldest first, shop by shop): what one web
    request replays, so that it ends well within the web's request timeout."""
    out: list[tuple[str, list[str]]] = []
    for shop, ids in plan:
        out.append((shop, list(ids[: max(n, 0)])))
        n -= len(out[-1][1])
    return out


@dataclass
class ReplayOutcome:
    replayed: int = 0
    blocked: list[str] = field(default_factory=list)  # shops whose erasure was still running


def replay(
    services: Services,
    plan: Sequence[tuple[str, list[str]]],
    *,
    progress: Callable[[int], None] | None = None,
    wait_s: float = REPLAY_WAIT_S,
) -> ReplayOutcome:
    """Put the plan's letters back on their queues (delivery/deadletters.py `replay`, a chunk
    per MULTI) and wake each shop's drain and delivery. A shop whose erasure still runs past
    `wait_s` is left for later (`blocked`). Raises StoreError."""
    from bridge.worker.queues import enqueue_deliver, enqueue_drain

    letters = DeadLetters(services.store)
    out = ReplayOutcome()
    for shop, ids in plan:
        for i in range(0, len(ids), REPLAY_CHUNK):
            chunk = ids[i : i + REPLAY_CHUNK]
            try:
                out.replayed += letters.replay(shop, letters.get_many(shop, chunk), wait_s)
            except ErasureRunning:
                out.blocked.append(shop)  # what is left of this shop: another time
                break
            if progress is not None:
                progress(len(chunk))
        keys = Keys(shop)
        if services.store.wake(keys.deliver_flag):
            enqueue_deliver(services.queue, shop)
        if services.store.wake(keys.drain_flag):
            enqueue_drain(services.queue, shop)
    return out


def purge(
    letters: DeadLetters,
    shops: Sequence[str],
    *,
    ids: Sequence[str] = (),
    before_ms: int | None = None,
) -> int:
    """Delete letters: the `ids` given (in every shop), else those older than `before_ms`,
    else every one; returns how many went."""
    purged = 0
    for shop in shops:
        purged += letters.purge(shop, list(ids) or letters.ids(shop, before_ms=before_ms))
    return purged
