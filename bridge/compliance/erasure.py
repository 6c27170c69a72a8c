"""Shopify's mandatory compliance topics: erase a customer, erase a shop, export a customer.

The requests flow through the normal queue (they are signed webhooks like any other); the
processor turns each into a `ComplianceRequest` committed with its batch (`cb:{shop}:compliance`),
and the drain runs the pending ones after the commit and removes each once done, so a crash
means a redo, never a request lost.

Erasure is generic on purpose, so that it does not depend on how the identity state is laid
out: it SCANs every key under the shop's prefix and removes whatever names the customer (by
id, lower-cased email, keyed email hash, or phone in E.164, raw and digit-only forms):
- a string record whose key name or value names them is deleted;
- list entries (inbound queue, outbox, parked and dead letters) naming them are removed one by
  one with LREM of the exact value (atomic per entry); queued compliance requests are kept;
- hash fields, set and sorted-set members naming them are removed.
Ids match as whole tokens (not inside a longer run of letters or digits), so an unrelated record
is removed only if it carries exactly the same number. Delivery's retry bookkeeping names people
by keyed hashes (bridge/keyed.py), which are needles too.

An erasure wins over a delivery in flight: it runs holding the shop's delivery lease, which it
takes after marking the shop (`Keys.erasing`, itself a lease) so that the deliverer holding it
ends its round at its next request and settles its window back into Redis, where the erasure
finds it (delivery.py, `Gate`). A deliverer in any process whose lease ran out meanwhile sends
nothing more and cannot write its window back (settles are refused without the lease). So once
an erasure is done, no call naming the person is queued anywhere or sent again; the only calls
sent after it began are those a request had already carried when it began. `User Deleted`
(FORWARD_REDACTIONS=true), queued by the erasure, goes after them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import redis

from bridge import keyed
from bridge.canonical import Mapped
from bridge.delivery.calls import validate_call
from bridge.delivery.deadletters import DeadLetters
from bridge.delivery.outbox import OutboxEntry
from bridge.identity import email_key
from bridge.ids import iso_z, message_id
from bridge.jsonio import parse_body
from bridge.store.facade import SHOPS_KEY, Envelope, Keys, now_ms
from bridge.store.lease import LEASE_TTL_MS, Lease

if TYPE_CHECKING:
    from bridge.services import Runtime

log = logging.getLogger(__name__)

CUSTOMERS_REDACT = "customers/redact"
CUSTOMERS_DATA_REQUEST = "customers/data_request"
SHOP_REDACT = "shop/redact"
COMPLIANCE_TOPICS = frozenset({CUSTOMERS_REDACT, CUSTOMERS_DATA_REQUEST, SHOP_REDACT})
USER_DELETED = "User Deleted"
EXPORT_SEGMENT = "gdpr:"
# How often an erasure tries again for a lease it waits for.
LEASE_POLL_S = 0.02

T = TypeVar("T")


class ErasureBlocked(Exception):
    """An erasure could not take the shop's delivery lease in time (or the worker is stopping):
    nothing was erased, the request stays pending."""


@dataclass(frozen=True)
class ComplianceRequest:
    """One compliance webhook as the drain runs it: who is concerned, and what to do."""

    topic: str
    shop: str
    webhook_id: str
    received_ms: int = 0
    customer_id: str | None = None
    email: str | None = None  # lower-cased
    phones: tuple[str, ...] = ()  # every written form: E.164, raw, digits
    order_ids: tuple[str, ...] = ()
    data_request_id: str | None = None

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "t": self.topic,
                "s": self.shop,
                "w": self.webhook_id,
                "r": self.received_ms,
                "c": self.customer_id,
                "e": self.email,
                "p": list(self.phones),
                "o": list(self.order_ids),
                "d": self.data_request_id,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> ComplianceRequest:
        d = orjson.loads(raw)
        return cls(
            topic=d["t"],
            shop=d["s"],
            webhook_id=d["w"],
            received_ms=int(d.get("r") or 0),
            customer_id=d.get("c"),
            email=d.get("e"),
            phones=tuple(d.get("p") or ()),
            order_ids=tuple(d.get("o") or ()),
            data_request_id=d.get("d"),
        )


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str):
        text = str(value).strip()
        return text or None
    return None


def request_from(env: Envelope, mapped: Mapped) -> ComplianceRequest:
    """The request a mapped compliance webhook makes (pure). The body is read again for what
    mapping does not keep: the raw phone, the order ids and the data request id."""
    person = mapped.person
    body = parse_body(env.body)
    body = body if isinstance(body, dict) else {}
    customer = body.get("customer") if isinstance(body.get("customer"), dict) else {}
    phones: list[str] = []
    raw_phone = _scalar(customer.get("phone")) if customer else None
    for form in (person.phone if person else None, raw_phone):
        if form and form not in phones:
            phones.append(form)
    if raw_phone:
        digits = "".join(ch for ch in raw_phone if ch.isdigit())
        if len(digits) >= 7 and digits not in phones:
            phones.append(digits)
    orders = body.get("orders_to_redact") or body.get("orders_requested") or []
    order_ids = tuple(
        s for s in (_scalar(o) for o in (orders if isinstance(orders, list) else [])) if s
    )
    request = body.get("data_request")
    return ComplianceRequest(
        topic=env.topic,
        shop=env.shop,
        webhook_id=env.webhook_id,
        received_ms=env.received_ms,
        customer_id=person.customer_id if person else None,
        email=person.email if person else None,
        phones=tuple(phones),
        order_ids=order_ids,
        data_request_id=_scalar(request.get("id")) if isinstance(request, dict) else None,
    )


# A token must not continue a run of letters or digits (an id inside a ULID is not that id).
_WORD_START = rb"(?<![0-9A-Za-z])"
_WORD_END = rb"(?![0-9A-Za-z])"


@dataclass(frozen=True)
class Needles:
    """What names a customer in stored bytes: whole-token ids, and case-free substrings."""

    tokens: tuple[str, ...] = ()  # ids and digit-only phones: matched as whole tokens
    texts: tuple[str, ...] = ()  # email, email hash, phones: matched anywhere, case-free
    key_tokens: tuple[str, ...] = ()  # also matched in key names only (order ids)
    _value_re: re.Pattern[bytes] | None = field(default=None, compare=False)
    _key_re: re.Pattern[bytes] | None = field(default=None, compare=False)

    @classmethod
    def of(
        cls, tokens: Iterable[str], texts: Iterable[str], key_tokens: Iterable[str] = ()
    ) -> Needles:
        toks = tuple(dict.fromkeys(t for t in tokens if t))
        txts = tuple(dict.fromkeys(t.lower() for t in texts if t))
        ktoks = tuple(dict.fromkeys(t for t in key_tokens if t))

        def pattern(tok: tuple[str, ...], txt: tuple[str, ...]) -> re.Pattern[bytes] | None:
            parts = [_WORD_START + re.escape(t.encode()) + _WORD_END for t in tok]
            parts += [re.escape(t.encode()) for t in txt]
            return re.compile(b"|".join(parts)) if parts else None

        return cls(toks, txts, ktoks, pattern(toks, txts), pattern(toks + ktoks, txts))

    def in_value(self, data: bytes) -> bool:
        return self._value_re is not None and self._value_re.search(data.lower()) is not None

    def in_key(self, key: bytes) -> bool:
        return self._key_re is not None and self._key_re.search(key.lower()) is not None


def needles_for(request: ComplianceRequest) -> Needles:
    """Every form in which the bridge may have stored this customer."""
    texts: list[str] = []
    tokens: list[str] = []
    # Delivery's retry bookkeeping names a person (the outbox header's: customer id or email) by
    # a keyed hash, or by the unkeyed one of entries queued before that (keyed.py).
    people = [p for p in (request.customer_id, request.email) if p]
    texts += [keyed.person_hash(p) for p in people]
    texts += [keyed.legacy_person_hash(p) for p in people]
    if request.customer_id:
        tokens.append(request.customer_id)
    if request.email:
        texts.append(request.email)
        texts.append(email_key(request.email).partition(":")[2])
    for phone in request.phones:
        (tokens if phone.isdigit() else texts).append(phone)
    return Needles.of(tokens, texts, key_tokens=request.order_ids)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _shop_keys(client: redis.Redis[bytes], shop: str) -> Iterator[bytes]:
    yield from client.scan_iter(match=_glob_escape(Keys(shop).prefix) + "*", count=1000)


def _is_compliance_envelope(entry: bytes) -> bool:
    head, sep, _ = entry.partition(b"\n")
    if not sep or not head.startswith(b"{"):
        return False
    try:
        parsed = orjson.loads(head)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and parsed.get("t") in COMPLIANCE_TOPICS


@dataclass
class Erased:
    keys: int = 0
    entries: int = 0


def _records(client: redis.Redis[bytes], shop: str) -> Iterator[tuple[bytes, str, bytes | None]]:
    """(key, type, value for strings) for every key of the shop, pipelined per SCAN page."""
    page: list[bytes] = []

    def flush() -> Iterator[tuple[bytes, str, bytes | None]]:
        pipe = client.pipeline(transaction=False)
        for key in page:
            pipe.type(key)
        kinds = [k.decode() for k in pipe.execute()]
        strings = [key for key, kind in zip(page, kinds, strict=True) if kind == "string"]
        values = dict(zip(strings, client.mget(strings), strict=True)) if strings else {}
        for key, kind in zip(page, kinds, strict=True):
            yield key, kind, values.get(key)

    for key in _shop_keys(client, shop):
        page.append(key)
        if len(page) >= 1000:
            yield from flush()
            page = []
    if page:
        yield from flush()


def erase_customer(client: redis.Redis[bytes], shop: str, needles: Needles) -> Erased:
    """Remove every record of `shop` naming the customer (see the module docstring).
    Raises redis errors; a rerun after a failure finishes the job."""
    k = Keys(shop)
    skip = {key.encode() for key in (k.compliance, k.deliver_lease, k.erasing)}
    out = Erased()
    doomed: list[bytes] = []
    for key, kind, value in _records(client, shop):
        if key in skip:
            continue
        if needles.in_key(key) or (value is not None and needles.in_value(value)):
            doomed.append(key)
        elif kind == "list":
            for entry in set(client.lrange(key, 0, -1)):
                if needles.in_value(entry) and not _is_compliance_envelope(entry):
                    out.entries += int(client.lrem(key, 0, entry))
        elif kind == "hash":
            fields = [
                f
                for f, v in client.hgetall(key).items()
                if needles.in_key(f) or needles.in_value(v)
            ]
            if fields:
                out.entries += int(client.hdel(key, *fields))
        elif kind == "set":
            members = [m for m in client.smembers(key) if needles.in_value(m)]
            if members:
                out.entries += int(client.srem(key, *members))
        elif kind == "zset":
            members = [m for m in client.zrange(key, 0, -1) if needles.in_value(m)]
            if members:
                out.entries += int(client.zrem(key, *members))
    for i in range(0, len(doomed), 500):
        out.keys += int(client.unlink(*doomed[i : i + 500]))
    # Dead letters are listed by id, a messageId: derived from the person, and of no use once
    # the letter it indexes is gone.
    out.entries += DeadLetters(client).drop_orphans(shop)
    return out


def erase_shop(client: redis.Redis[bytes], shop: str, keep: Collection[str] = ()) -> int:
    """Unlink every key of the shop but `keep` (the leases the erasure holds, which go when it
    lets them go) and forget the shop; returns the keys removed."""
    n = 0
    batch: list[bytes] = []
    kept = {key.encode() for key in keep}
    for key in _shop_keys(client, shop):
        if key in kept:
            continue
        batch.append(key)
        if len(batch) >= 500:
            n += int(client.unlink(*batch))
            batch = []
    if batch:
        n += int(client.unlink(*batch))
    client.srem(SHOPS_KEY, shop)
    return n


def scrub_file(path: str, needles: Needles) -> int:
    """Drop the lines of a JSONL file (the dry-run file) that name the customer; returns how
    many. The file is rewritten beside itself and renamed over, under an exclusive lock."""
    target = Path(path)
    if not target.exists():
        return 0
    with open(target, "rb+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        lines = fh.read().splitlines(keepends=True)
        kept = [line for line in lines if not needles.in_value(line)]
        if len(kept) == len(lines):
            return 0
        tmp = target.with_name(target.name + ".scrub")
        tmp.write_bytes(b"".join(kept))
        os.replace(tmp, target)
    return len(lines) - len(kept)


def _readable(raw: bytes) -> Any:
    """A stored value as JSON for an export: parsed where it is JSON (envelopes and outbox
    entries are a JSON header line and a JSON body), else text."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    head, sep, rest = raw.partition(b"\n")
    if sep:
        try:
            return {"header": orjson.loads(head), "body": parse_body(rest)}
        except ValueError:
            pass
    return raw.decode("utf-8", "replace")


def collect_customer(client: redis.Redis[bytes], shop: str, needles: Needles) -> list[Any]:
    """Every record of `shop` naming the customer, as JSON (earlier exports left out)."""
    k = Keys(shop)
    skip = {k.compliance.encode()}
    export_prefix = (k.prefix + EXPORT_SEGMENT).encode()
    records: list[Any] = []
    for key, kind, value in sorted(_records(client, shop)):
        if key in skip or key.startswith(export_prefix):
            continue
        name = key.decode("utf-8", "replace")
        by_key = needles.in_key(key)
        if kind == "string":
            if value is not None and (by_key or needles.in_value(value)):
                records.append({"key": name, "value": _readable(value)})
        elif kind == "list":
            items = [
                _readable(e) for e in client.lrange(key, 0, -1) if by_key or needles.in_value(e)
            ]
            if items:
                records.append({"key": name, "entries": items})
        elif kind == "hash":
            fields = {
                f.decode("utf-8", "replace"): _readable(v)
                for f, v in client.hgetall(key).items()
                if by_key or needles.in_key(f) or needles.in_value(v)
            }
            if fields:
                records.append({"key": name, "fields": fields})
        elif kind in ("set", "zset"):
            members = client.smembers(key) if kind == "set" else set(client.zrange(key, 0, -1))
            found = sorted(
                m.decode("utf-8", "replace") for m in members if by_key or needles.in_value(m)
            )
            if found:
                records.append({"key": name, "members": found})
    return records


def export_key(shop: str, request: ComplianceRequest) -> str:
    return f"{Keys(shop).prefix}{EXPORT_SEGMENT}{request.data_request_id or request.webhook_id}"


def record_export(
    client: redis.Redis[bytes], request: ComplianceRequest, ttl_s: int
) -> tuple[str, int]:
    """Store the customer's export under `export_key`; returns (key, records found)."""
    records = collect_customer(client, request.shop, needles_for(request))
    export = {
        "shop": request.shop,
        "customer": {
            "id": request.customer_id,
            "email": request.email,
            "phones": list(request.phones),
        },
        "data_request_id": request.data_request_id,
        "webhook_id": request.webhook_id,
        "requested_at": iso_z(datetime.fromtimestamp(request.received_ms / 1000, tz=UTC)),
        "exported_at": iso_z(datetime.now(UTC)),
        "records": records,
    }
    key = export_key(request.shop, request)
    client.set(key, orjson.dumps(export), ex=ttl_s)
    return key, len(records)


def user_deleted_entry(request: ComplianceRequest) -> bytes | None:
    """The outbox entry for Customer.io's `User Deleted` semantic event, or None when the
    request names no person the bridge would have identified (pure)."""
    user_id = request.customer_id or request.email
    if not user_id:
        return None
    at = datetime.fromtimestamp((request.received_ms or now_ms()) / 1000, tz=UTC)
    call = {
        "type": "track",
        "messageId": message_id(at, request.shop, USER_DELETED, user_id),
        "timestamp": iso_z(at),
        "userId": user_id,
        "event": USER_DELETED,
        "properties": {},
    }
    return OutboxEntry(
        validate_call(call), request.received_ms, user_id, event=USER_DELETED
    ).encode()


@contextmanager
def _taken(rt: Runtime, key: str, give_up: float) -> Iterator[Lease]:
    """Hold the lease `key`, waiting for its holder to let it go or for it to run out.
    Raises ErasureBlocked past `give_up` (monotonic time) or when the worker stops."""
    while True:
        with Lease(rt.store, key) as lease:
            if lease.held:
                yield lease
                return
        if time.monotonic() > give_up:
            raise ErasureBlocked(f"{key} is still held")
        if rt.stopping.wait(LEASE_POLL_S):
            raise ErasureBlocked("the worker is stopping")


def erase_exclusively(rt: Runtime, shop: str, erase: Callable[[], T]) -> T:
    """Run `erase` holding the shop's delivery lease, taken after marking the shop as erasing
    (see the module docstring), then wake the shop's delivery for what is left.

    An erase during which the lease was lost (this process stalled past its lease) is run again:
    a deliverer may have held the lease meanwhile. Waits at most for a request in flight to be
    answered and a dead deliverer's lease to run out; raises ErasureBlocked past that, and redis
    errors (the request stays pending either way)."""
    keys = Keys(shop)
    give_up = time.monotonic() + LEASE_TTL_MS / 1000 + 3 * rt.settings.http_timeout_s
    while True:
        with ExitStack() as held:
            held.enter_context(_taken(rt, keys.erasing, give_up))
            lease = held.enter_context(_taken(rt, keys.deliver_lease, give_up))
            result = erase()
            if lease.still_held():
                break
        log.warning("delivery lease lost during an erasure; erasing again", extra={"shop": shop})
    if rt.store.finish_deliver(shop):
        rt.deliver_soon(shop)
    return result


def run(rt: Runtime, request: ComplianceRequest) -> None:
    """Carry out one compliance request. Raises redis errors and ErasureBlocked (the request
    stays pending)."""
    client = rt.redis
    shop = request.shop
    keys = Keys(shop)
    if request.topic == SHOP_REDACT:
        held = (keys.deliver_lease, keys.erasing)
        n = erase_exclusively(rt, shop, lambda: erase_shop(client, shop, keep=held))
        if rt.settings.dry_run_file:
            scrub_file(rt.settings.dry_run_file, Needles.of((), (shop,)))
        log.warning("shop data erased", extra={"shop": shop, "keys": n})
    elif request.topic == CUSTOMERS_REDACT:
        needles = needles_for(request)
        entry = user_deleted_entry(request) if rt.settings.forward_redactions else None

        def erase() -> Erased:
            erased = erase_customer(client, shop, needles)
            if entry is not None:
                # Queued under the lease: it goes after every call of theirs that went before.
                client.rpush(keys.outbox, entry)
                rt.store.count(shop, f"events:{USER_DELETED}:queued")
            return erased

        erased = erase_exclusively(rt, shop, erase)
        lines = scrub_file(rt.settings.dry_run_file, needles) if rt.settings.dry_run_file else 0
        log.warning(
            "customer data erased",
            extra={"shop": shop, "keys": erased.keys, "entries": erased.entries, "lines": lines},
        )
        rt.store.count(shop, "compliance:customers/redact:done")
    elif request.topic == CUSTOMERS_DATA_REQUEST:
        _key, n = record_export(client, request, rt.settings.gdpr_export_ttl_s)
        log.warning("customer data exported", extra={"shop": shop, "records": n})
        rt.store.count(shop, "compliance:customers/data_request:done")


def run_pending(rt: Runtime, shop: str) -> int:
    """Run the shop's committed compliance requests in order, removing each once done."""
    key = Keys(shop).compliance
    done = 0
    for raw in rt.redis.lrange(key, 0, -1):
        try:
            request = ComplianceRequest.decode(raw)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.error("unreadable compliance request dropped", extra={"shop": shop})
            rt.redis.lrem(key, 1, raw)
            continue
        run(rt, request)
        rt.redis.lrem(key, 1, raw)
        done += 1
    return done
