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
by keyed hashes (bridge/keyed.py), which are needles too. The ops console's ledger of a person's
calls is named by the same hash of their customer id or email, and, for the calls made while
they were anonymous, of the anonymous ids their cart, order and person records name: those
ledgers are erased (and exported) with the records that name them.

An erasure wins over a delivery in flight: it runs holding the shop's delivery lease, which it
takes after marking the shop (`Keys.erasing`, itself a lease) so that the deliverer holding it
ends its round at its next request and settles its window back into Redis, where the erasure
finds it (deliver.py, `Gate`). A deliverer in any process whose lease ran out meanwhile sends
nothing more and cannot write its window back (settles are refused without the lease). So once
an erasure is done, no call naming the person is queued anywhere or sent again; the only calls
sent after it began are those a request had already carried when it began. `User Deleted`
(FORWARD_REDACTIONS=true), queued by the erasure, goes after them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import orjson

from bridge import keyed
from bridge.compliance.requests import (
    COMPLIANCE_TOPICS,
    CUSTOMERS_DATA_REQUEST,
    CUSTOMERS_REDACT,
    SHOP_REDACT,
    USER_DELETED,
    ComplianceRequest,
    Needles,
    anonymous_ids,
    needles_for,
    user_deleted_entry,
)
from bridge.delivery.deadletters import DeadLetters
from bridge.ids import iso_z
from bridge.jsonio import parse_body
from bridge.store import wire
from bridge.store.facade import Store, now_ms
from bridge.store.keys import Keys
from bridge.store.lease import LEASE_TTL_MS, Lease
from bridge.store.tally import FLUSH_INTERVAL_S

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)

# How often an erasure tries again for a lease it waits for.
LEASE_POLL_S = 0.02

T = TypeVar("T")


class ErasureBlocked(Exception):
    """An erasure could not take the shop's delivery lease in time (or the worker is stopping):
    nothing was erased, the request stays pending."""


def _is_compliance_envelope(entry: bytes) -> bool:
    return wire.envelope_topic(entry) in COMPLIANCE_TOPICS


@dataclass
class Erased:
    keys: int = 0
    entries: int = 0


def erase_customer(store: Store, shop: str, needles: Needles) -> Erased:
    """Remove every record of `shop` naming the customer (see the module docstring).
    Raises redis errors; a rerun after a failure finishes the job."""
    k = Keys(shop)
    skip = {key.encode() for key in (k.compliance, k.deliver_lease, k.erasing)}
    data = store.shop_data
    out = Erased()
    doomed: list[bytes] = []
    anons: list[str] = []
    for key, kind, value in data.records(shop):
        if key in skip:
            continue
        if needles.in_key(key) or (value is not None and needles.in_value(value)):
            doomed.append(key)
            if value is not None:
                anons += anonymous_ids(value)
        elif kind == "list":
            for entry in set(data.list_entries(key)):
                if needles.in_value(entry) and not _is_compliance_envelope(entry):
                    out.entries += data.remove_list_entry(key, entry)
        elif kind == "hash":
            fields = [
                f
                for f, v in data.hash_fields(key).items()
                if needles.in_key(f) or needles.in_value(v)
            ]
            if fields:
                out.entries += data.remove_hash_fields(key, fields)
        elif kind == "set":
            members = [m for m in data.set_members(key) if needles.in_value(m)]
            if members:
                out.entries += data.remove_set_members(key, members)
        elif kind == "zset":
            members = [m for m in data.zset_members(key) if needles.in_value(m)]
            if members:
                out.entries += data.remove_zset_members(key, members)
    # The ledgers of the calls made while they were anonymous name only the anonymous id.
    doomed += [key for key in _anonymous_ledgers(k, anons) if key not in doomed]
    out.keys += data.unlink(doomed)
    # Dead letters are listed by id, a messageId: derived from the person, and of no use once
    # the letter it indexes is gone.
    out.entries += DeadLetters(store).drop_orphans(shop)
    return out


def _anonymous_ledgers(k: Keys, anons: Collection[str]) -> list[bytes]:
    return [k.ledger(keyed.person_hash(a)).encode() for a in dict.fromkeys(anons)]


def erase_shop(store: Store, shop: str, keep: Collection[str] = ()) -> int:
    """Unlink every key of the shop but `keep` (the leases the erasure holds, which go when it
    lets them go) and forget the shop; returns the keys removed.

    This process's unwritten counters of the shop go too (store/tally.py), or the next flush
    would bring its stats and charts back. Another worker that counted the shop in the second
    before (a drain or a delivery: none can run during the erasure, which holds both leases)
    writes those counts within a second; `run` removes them after that."""
    n = store.shop_data.erase_shop(shop, keep)
    store.tally.forget(Keys(shop).prefix)
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


def collect_customer(store: Store, shop: str, needles: Needles) -> list[Any]:
    """Every record of `shop` naming the customer, as JSON (earlier exports left out)."""
    data = store.shop_data
    k = Keys(shop)
    skip = {k.compliance.encode()}
    export_prefix = k.exports.encode()
    records: list[Any] = []
    anons: list[str] = []
    listed: set[bytes] = set()
    for key, kind, value in sorted(data.records(shop)):
        if key in skip or key.startswith(export_prefix):
            continue
        name = key.decode("utf-8", "replace")
        by_key = needles.in_key(key)
        if kind == "string":
            if value is not None and (by_key or needles.in_value(value)):
                records.append({"key": name, "value": _readable(value)})
                anons += anonymous_ids(value)
        elif kind == "list":
            items = [_readable(e) for e in data.list_entries(key) if by_key or needles.in_value(e)]
            if items:
                records.append({"key": name, "entries": items})
                listed.add(key)
        elif kind == "hash":
            fields = {
                f.decode("utf-8", "replace"): _readable(v)
                for f, v in data.hash_fields(key).items()
                if by_key or needles.in_key(f) or needles.in_value(v)
            }
            if fields:
                records.append({"key": name, "fields": fields})
        elif kind in ("set", "zset"):
            members = data.set_members(key) if kind == "set" else set(data.zset_members(key))
            found = sorted(
                m.decode("utf-8", "replace") for m in members if by_key or needles.in_value(m)
            )
            if found:
                records.append({"key": name, "members": found})
    # The ledgers of the calls made while they were anonymous (named by the anonymous id).
    for key in _anonymous_ledgers(k, anons):
        entries = [] if key in listed else data.list_entries(key)
        if entries:
            records.append(
                {"key": key.decode("utf-8", "replace"), "entries": [_readable(e) for e in entries]}
            )
    return records


def export_key(shop: str, request: ComplianceRequest) -> str:
    return Keys(shop).export(_export_id(request))


def _export_id(request: ComplianceRequest) -> str:
    return request.data_request_id or request.webhook_id


def record_export(store: Store, request: ComplianceRequest, ttl_s: int) -> tuple[str, int]:
    """Store the customer's export under `export_key`; returns (key, records found)."""
    records = collect_customer(store, request.shop, needles_for(request))
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
    key = store.shop_data.save_export(
        request.shop, _export_id(request), orjson.dumps(export), ttl_s
    )
    return key, len(records)


@contextmanager
def _taken(services: Services, key: str, give_up: float) -> Iterator[Lease]:
    """Hold the lease `key`, waiting for its holder to let it go or for it to run out.
    Raises ErasureBlocked past `give_up` (monotonic time) or when the worker stops."""
    while True:
        with Lease(services.store, key) as lease:
            if lease.held:
                yield lease
                return
        if time.monotonic() > give_up:
            raise ErasureBlocked(f"{key} is still held")
        if services.stopping.wait(LEASE_POLL_S):
            raise ErasureBlocked("the worker is stopping")


def erase_exclusively(services: Services, shop: str, erase: Callable[[], T]) -> T:
    """Run `erase` holding the shop's delivery lease, taken after marking the shop as erasing
    (see the module docstring), then wake the shop's delivery for what is left.

    An erase during which the lease was lost (this process stalled past its lease) is run again:
    a deliverer may have held the lease meanwhile. Waits at most for a request in flight to be
    answered and a dead deliverer's lease to run out; raises ErasureBlocked past that, and redis
    errors (the request stays pending either way)."""
    keys = Keys(shop)
    give_up = time.monotonic() + LEASE_TTL_MS / 1000 + 3 * services.settings.http_timeout_s
    while True:
        with ExitStack() as held:
            held.enter_context(_taken(services, keys.erasing, give_up))
            lease = held.enter_context(_taken(services, keys.deliver_lease, give_up))
            result = erase()
            if lease.still_held():
                break
        log.warning("delivery lease lost during an erasure; erasing again", extra={"shop": shop})
    if services.store.finish_deliver(shop):
        services.deliver_soon(shop)
    return result


def run(services: Services, request: ComplianceRequest) -> None:
    """Carry out one compliance request. Raises redis errors and ErasureBlocked (the request
    stays pending)."""
    store = services.store
    shop = request.shop
    keys = Keys(shop)
    if request.topic == SHOP_REDACT:
        held = (keys.deliver_lease, keys.erasing)
        n = erase_exclusively(services, shop, lambda: erase_shop(store, shop, keep=held))
        # Another worker's counters of the shop from the second before the erasure reach Redis
        # within a flush interval (store/tally.py): gone again once that has passed. A stop cuts
        # the wait short but not the removal of those that landed: the request went with the
        # shop's keys, so no later run would remove them.
        services.stopping.wait(2 * FLUSH_INTERVAL_S)
        n += store.shop_data.erase_counters(shop)
        # A worker whose ticker walks many shops can flush later than that: the sweep removes
        # the shop's counters again for ERASED_RECHECK_S (worker/sweep.py).
        store.shop_data.note_erased(shop, now_ms())
        if services.settings.dry_run_file:
            scrub_file(services.settings.dry_run_file, Needles.of((), (shop,)))
        log.warning("shop data erased", extra={"shop": shop, "keys": n})
    elif request.topic == CUSTOMERS_REDACT:
        needles = needles_for(request)
        forward = services.settings.forward_redactions
        entry = user_deleted_entry(request, now_ms()) if forward else None

        def erase() -> Erased:
            erased = erase_customer(store, shop, needles)
            if entry is not None:
                # Queued under the lease: it goes after every call of theirs that went before.
                store.append_outbox(shop, entry)
                services.store.count(shop, f"events:{USER_DELETED}:queued")
            return erased

        erased = erase_exclusively(services, shop, erase)
        lines = (
            scrub_file(services.settings.dry_run_file, needles)
            if services.settings.dry_run_file
            else 0
        )
        log.warning(
            "customer data erased",
            extra={"shop": shop, "keys": erased.keys, "entries": erased.entries, "lines": lines},
        )
        services.store.count(shop, "compliance:customers/redact:done")
    elif request.topic == CUSTOMERS_DATA_REQUEST:
        _key, n = record_export(store, request, services.settings.gdpr_export_ttl_s)
        log.warning("customer data exported", extra={"shop": shop, "records": n})
        services.store.count(shop, "compliance:customers/data_request:done")


@keyed.forgetting  # an erasure names the erased email: the digests' memos must not keep it
def run_pending(services: Services, shop: str) -> int:
    """Run the shop's committed compliance requests in order, removing each once done."""
    done = 0
    for raw in services.store.compliance_requests(shop):
        try:
            request = ComplianceRequest.decode(raw)
        except msgspec.DecodeError:
            log.error("unreadable compliance request dropped", extra={"shop": shop})
            services.store.remove_compliance_request(shop, raw)
            continue
        run(services, request)
        services.store.remove_compliance_request(shop, raw)
        done += 1
    return done
