"""Turn a batch of queued webhooks into outbound calls and the state they change (no I/O).

The drain job loads the batch's state records in one round trip, calls `process`, and commits
the result atomically with the removal of the batch from the queue.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge import keyed
from bridge.canonical import MapContext, Mapped
from bridge.compliance.requests import COMPLIANCE_TOPICS, request_from
from bridge.config.settings import Settings
from bridge.config.stores import StoreConfig
from bridge.delivery.calls import InvalidCall, validate_call
from bridge.delivery.deadletters import DeadLetter, call_letter, log_dead_letter, webhook_letter
from bridge.delivery.outbox import OutboxEntry
from bridge.identity import DecisionView, Policy, decide, keys_for
from bridge.identity.browse_policy import DEFAULT_POLICY as DEFAULT_BROWSE
from bridge.identity.browse_policy import BrowsePolicy
from bridge.jsonio import parse_body
from bridge.logs import redact
from bridge.monitoring import volume
from bridge.products import cache as product_cache
from bridge.products.enrich import enrich, product_ids, record_names
from bridge.products.record import MetafieldKeys
from bridge.sources import MappingError, Source
from bridge.sources.pixel import PREFIX as PIXEL_PREFIX
from bridge.store import ops as ops_records
from bridge.store import wire
from bridge.store.facade import Commit, Keys
from bridge.store.wire import Envelope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessConfig:
    """A shop's processing rules, built from Settings (and the shop's store) by `for_shop`:
    Settings holds every default, and MapContext and Policy are built only from here."""

    shop_currency: str
    skip_test_orders: bool
    naming: str
    order_completed_on: str
    checkout_contact_wait_s: int
    refund_order_wait_s: int
    unjoined_order_window_s: int
    identity_hint_customer_attr: str
    identity_hint_anonymous_attr: str
    dedupe_ttl_s: int
    api_version: str  # SHOPIFY_API_VERSION: what the webhooks should carry ("": not checked)
    ledger_calls: int = 50  # OPS_LEDGER_CALLS: each person's ledger of calls (0: none written)
    browse: BrowsePolicy = DEFAULT_BROWSE  # storefront browse events (issue 17)
    # The store's replenishment metafields and how long a cached product lives (products/).
    metafields: MetafieldKeys = field(default_factory=MetafieldKeys)
    product_ttl_s: int = product_cache.DEFAULT_TTL_S

    @classmethod
    def defaults(cls, **overrides: Any) -> ProcessConfig:
        """The rules Settings' defaults give, with `overrides` (previews and tests)."""
        return replace(cls.for_shop(Settings.model_construct(), None), **overrides)

    @classmethod
    def for_shop(cls, settings: Settings, store: StoreConfig | None) -> ProcessConfig:
        """The rules for one shop: the environment's, with its store's currency."""
        s = settings
        return cls(
            shop_currency=store.currency if store is not None else s.shop_currency,
            skip_test_orders=s.skip_test_orders,
            naming=s.event_naming,
            order_completed_on=s.order_completed_on,
            checkout_contact_wait_s=s.checkout_contact_wait_s,
            refund_order_wait_s=s.refund_order_wait_s,
            unjoined_order_window_s=s.unjoined_order_window_s,
            identity_hint_customer_attr=s.identity_hint_customer_attr,
            identity_hint_anonymous_attr=s.identity_hint_anonymous_attr,
            dedupe_ttl_s=s.webhook_dedupe_ttl_s,
            api_version=s.shopify_api_version,
            ledger_calls=s.ops_ledger_calls,
            browse=browse_policy(s, store),
            metafields=metafield_keys(s, store),
            product_ttl_s=s.product_cache_ttl_s,
        )

    def map_context(self, shop: str, triggered_at: datetime | None = None) -> MapContext:
        """What mapping may know of these rules (the only builder of a MapContext)."""
        return MapContext(
            shop=shop,
            shop_currency=self.shop_currency,
            skip_test_orders=self.skip_test_orders,
            triggered_at=triggered_at,
            order_completed_on=self.order_completed_on,
            identity_hint_customer_attr=self.identity_hint_customer_attr,
            identity_hint_anonymous_attr=self.identity_hint_anonymous_attr,
        )

    def policy(self, shop: str, now: datetime | None = None) -> Policy:
        """What the stateful step may know of these rules, with the batch's clock."""
        return Policy(
            shop=shop,
            naming=self.naming,
            now=now,
            order_completed_on=self.order_completed_on,
            checkout_contact_wait_s=self.checkout_contact_wait_s,
            refund_order_wait_s=self.refund_order_wait_s,
            unjoined_order_window_s=self.unjoined_order_window_s,
            browse=self.browse,
            metafields=self.metafields,
        )


def browse_policy(settings: Settings, store: StoreConfig | None) -> BrowsePolicy:
    """A shop's browse-event rules: the store's PIXEL_* values where it sets them, else the
    environment's (Settings.model_construct() gives the defaults)."""
    s = settings
    return BrowsePolicy(
        forwarded=frozenset(
            store.pixel_events
            if store is not None and store.pixel_events is not None
            else s.pixel_forwarded
        ),
        view_window_s=_first(store and store.pixel_view_window_s, s.pixel_view_window_s),
        sample_rate=_first(store and store.pixel_sample_rate, s.pixel_sample_rate),
        client_hourly_cap=_first(
            store and store.pixel_client_hourly_cap, s.pixel_client_hourly_cap
        ),
    )


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value


def metafield_keys(settings: Settings, store: StoreConfig | None) -> MetafieldKeys:
    """The shop's replenishment metafields: its store's, else the environment's."""
    return MetafieldKeys(
        replenishable=(store and store.replenishable_metafield)
        or settings.product_replenishable_metafield,
        days_to_replenish=(store and store.days_to_replenish_metafield)
        or settings.product_days_to_replenish_metafield,
    )


BROWSE_TOPIC_PREFIX = PIXEL_PREFIX + "/"


# State lookups per batch: the records the payloads name, then up to two more rounds for
# records only nameable after a first lookup (refund -> order -> person -> order index).
MAX_LOAD_ROUNDS = 3
# A parked webhook's reason, as stored and logged.
MAX_REASON_CHARS = 500


def parse_time(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None


def park_record(env: Envelope, reason: str) -> bytes:
    """A webhook that cannot be mapped, as a dead letter: its envelope (for replay) and reason."""
    return webhook_letter(env.shop, env.encode(), env.topic, env.webhook_id, reason).encode()


def map_envelope(env: Envelope, source: Source, config: ProcessConfig) -> Mapped:
    """Parse and map one webhook. Raises MappingError for anything it cannot read."""
    try:
        body = parse_body(env.body)
    except ValueError as exc:
        raise MappingError(f"body is not JSON: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise MappingError("body is not a JSON object")
    ctx = config.map_context(env.shop, parse_time(env.triggered_at))
    return source.map(env.topic, body, ctx)


@keyed.forgetting  # the digests' memos hold the batch's emails and tokens as their keys
def process(
    shop: str,
    raw: list[bytes],
    *,
    source: Source,
    config: ProcessConfig,
    load: Callable[[list[str]], Mapping[str, bytes | None]],
    key_of: Callable[[str], str],
    now: datetime | None = None,
    mark_claimed: bool = False,
    processed: Collection[str] = (),
) -> Commit:
    """Map, resolve and validate a batch; `load` fetches state records by key in one call.

    `load` is called at most MAX_LOAD_ROUNDS times per batch (never per webhook); `now` is the
    batch's clock for holds and waits (default: the wall clock). `mark_claimed`: the batch is
    a work list another drain left (its lease lost or its worker gone), so claimed copies are
    marked seen too: that drain, if still running, then finds them processed. `processed`:
    the seen-markers of webhooks the drain's batch before this one processed (its commit's
    `processed`): a copy of one of them here is a duplicate, even one its claim names (two
    identical copies, queued when the web's write was sent again on a new connection, can fall
    on either side of a batch boundary; a claimed copy gets no seen-marker in Redis).
    """
    commit = Commit(seen_ttl_s=config.dedupe_ttl_s, ledger_keep=config.ledger_calls)
    keys = Keys(shop)
    envs = [Envelope.decode(item) for item in raw]
    read: list[Mapped | str] = []  # each webhook's mapping, or why it cannot be mapped
    for env in envs:
        try:
            read.append(map_envelope(env, source, config))
        except Exception as exc:  # a schema surprise must not crash or stall the drain
            read.append(failure_reason(exc, "mapping failed"))

    # Deduplication: the request path sets each webhook id's claim to a token its queued copy
    # carries (`Envelope.claim`, `Keys.claim`); the copy the claim names is processed, and any
    # other copy, one whose id has a seen-marker (processed), or one whose id came earlier in
    # this batch, is counted and skipped. A copy with no claim (backfill, a replay, an older
    # version's web) or whose claim is gone (it outlived the TTL in the queue) is processed
    # unless its id has a seen-marker, and is marked seen in this batch's commit, with its
    # results.
    # Storefront pixel events get no seen-marker: a marker per browse event for 72 h would
    # cost more memory than all their other state, and each is deduplicated on its pixel event
    # id in its browser's record instead (identity/browse_policy.py).
    browse = [is_browse_topic(env.topic) for env in envs]  # asked once a webhook, used 4 times
    seen_keys = [
        None if b else keys.seen(env.webhook_id) for env, b in zip(envs, browse, strict=True)
    ]
    # Product records (and the wanted list) ride in the same MGET as the identity records.
    # Each webhook's products are found once (a walk of all its items), for the load and for
    # the enrichment of every decide round.
    products = [None if isinstance(m, str) else product_ids(m) for m in read]
    names = [
        n
        for m, ids in zip(read, products, strict=True)
        if not isinstance(m, str)
        for n in (*keys_for(m), *record_names(m, ids))
    ]
    marked = [k for k in seen_keys if k is not None]
    claim_keys = [
        None if b else keys.claim(env.webhook_id) for env, b in zip(envs, browse, strict=True)
    ]
    marked += [k for k in claim_keys if k is not None]
    # Each name's key once (a batch names an order's records ~3 times over), kept for the
    # decide rounds' views.
    name_keys = {record: key_of(record) for record in dict.fromkeys(names)}
    wanted = list(dict.fromkeys([*name_keys.values(), *marked]))
    loaded: dict[str, bytes | None] = dict(load(wanted))
    # Popped once each (a webhook id may come more than once in a batch).
    markers = {key: loaded.pop(key, None) for key in dict.fromkeys(marked)}
    done = commit.processed  # this batch's (`processed`: the batch's before)
    mapped: list[tuple[Envelope, Mapped]] = []
    mapped_products: list[list[str]] = []  # each mapped webhook's product ids
    # Storefront browse events are not webhooks: neither charted nor logged as such (they are
    # counted in cartbridge_browse_total), so a busy storefront cannot push the shop's webhooks
    # out of its log.
    commit.webhooks_at.extend(env.received_ms for env, b in zip(envs, browse, strict=True) if not b)
    # Each version a batch's webhooks carry gives the same counter name (one regex and format
    # a batch, not a webhook).
    version_counters: dict[str | None, str] = {}
    for item, env, m, seen_key, claim_key, ids, is_browse in zip(
        raw, envs, read, seen_keys, claim_keys, products, browse, strict=True
    ):
        if seen_key is not None and claim_key is not None:
            claim = markers[claim_key]
            claimed = claim is not None and env.claim is not None and claim == env.claim.encode()
            if (
                seen_key in done
                or seen_key in processed  # by the drain's batch before this one
                or markers[seen_key] is not None  # processed
                or (claim is not None and not claimed)  # another copy claimed the id
            ):
                commit.count(f"webhooks:{env.topic}:duplicate")
                _log_webhook(commit, env, "duplicate")
                continue
            done.add(seen_key)
            if not claimed or mark_claimed:
                commit.seen.append(seen_key)
        # Only Shopify's webhooks carry its API version: not our backfill topics, and not
        # another source's (prefixed, "recharge/charge/failed": two slashes, Shopify's have one).
        shopify = (
            env.topic.count("/") == 1 and not env.topic.startswith("backfill/") and not is_browse
        )
        if config.api_version and shopify:
            counter = version_counters.get(env.api_version)
            if counter is None:
                counter = version_counters[env.api_version] = api_version_counter(
                    env.api_version, config.api_version
                )
            commit.count(counter)
        if isinstance(m, str):
            _park(commit, env, item, m[:MAX_REASON_CHARS])
            continue
        mapped.append((env, m))
        mapped_products.append(ids or [])
        if env.topic in COMPLIANCE_TOPICS:
            # Committed with the batch; the drain carries it out after the commit (issue 7).
            commit.compliance.append(request_from(env, m).encode())

    policy = config.policy(shop, now or datetime.now(UTC))
    failed: dict[int, str] = {}  # index in `mapped` -> why that webhook could not be processed
    check_writes = False  # set once the batch's state writes failed to encode: find the culprit
    round_no = 1
    while True:
        # Deciding is pure, so a round is simply redone: with records it read but was not
        # given, or without a webhook that failed in it (its partial writes die with the view).
        view = DecisionView(loaded, key_of=key_of, keys=name_keys)
        decided: list[tuple[Envelope, Mapped, _Outcome]] = []
        culprit: tuple[int, str] | None = None
        for i, (env, m) in enumerate(mapped):
            if i in failed:
                continue
            try:
                noted = len(view.notes)
                m = enrich(m, view, config.metafields, policy.clock(), mapped_products[i])
                if m.product is not None:
                    product_cache.apply(view, m.product, config.product_ttl_s)
                outcome = _decide_one(shop, env, m, view, policy)
                outcome.notes = view.notes[noted:]
                if check_writes:
                    view.writes()
            except Exception as exc:  # one webhook's surprise never stops its shop (issue 12)
                culprit = (i, failure_reason(exc, "processing failed"))
                break
            decided.append((env, m, outcome))
        if culprit is not None:
            failed[culprit[0]] = culprit[1]
            continue
        try:
            writes = view.writes()
        except Exception:
            if check_writes:
                raise  # no single webhook's records fail alone: the batch fails as a whole
            check_writes = True
            continue
        missing = view.misses - loaded.keys()
        if not missing or round_no == MAX_LOAD_ROUNDS:
            break
        loaded.update(load(sorted(missing)))
        round_no += 1
    for i, reason in failed.items():
        env, _ = mapped[i]
        _park(commit, env, env.encode(), reason)
    for env, m, outcome in decided:
        if m.skipped:
            commit.count(f"webhooks:{env.topic}:skipped")
            _log_webhook(commit, env, "skipped", reason=str(m.skipped))
            continue
        outcome.apply(commit, shop, env)
        commit.count(f"webhooks:{env.topic}:processed")
    for name, n in view.counters.items():
        commit.count(name, n)
    commit.state_set, commit.state_del = writes
    return commit


def is_browse_topic(topic: str) -> bool:
    """True for a storefront pixel event's envelope topic (`pixel/product_viewed`)."""
    return topic.startswith(BROWSE_TOPIC_PREFIX)


# Shopify names a version YYYY-MM; anything else is counted as "other", so a sender cannot make
# up metric labels.
_API_VERSION = re.compile(r"\d{4}-\d{2}")


def api_version_counter(carried: str | None, configured: str) -> str:
    """The counter of one webhook's `X-Shopify-API-Version` against the configured one:
    `webhook_api_version:<version>:match|mismatch`. Shopify serves the oldest supported version
    in place of one past its support window, so a mismatch means payloads changed shape."""
    label = carried if carried and _API_VERSION.fullmatch(carried) else "other"
    return f"webhook_api_version:{label}:{'match' if carried == configured else 'mismatch'}"


def failure_reason(exc: BaseException, step: str) -> str:
    """Why a webhook could not be processed, short and safe to log and store: the exception's
    kind and message with emails, phones and keyed URLs redacted (messages can quote values)."""
    text = str(exc) if isinstance(exc, MappingError) else f"{step}: {type(exc).__name__}: {exc}"
    return redact(text)[:MAX_REASON_CHARS]


def _park(commit: Commit, env: Envelope, raw: bytes, reason: str) -> None:
    letter = webhook_letter(env.shop, raw, env.topic, env.webhook_id, reason)
    log_dead_letter(letter)
    commit.letters.append(letter)
    commit.count(f"webhooks:{env.topic}:parked")
    _log_webhook(commit, env, "parked", reason=reason)


def _log_webhook(
    commit: Commit,
    env: Envelope,
    result: str,
    *,
    calls: dict[str, int] | None = None,
    notes: dict[str, int] | None = None,
    reason: str = "",
) -> None:
    """One entry of the shop's webhook log (the ops console's), written with the commit."""
    if is_browse_topic(env.topic):
        return
    commit.webhook_log.append(
        ops_records.webhook_entry(
            env.received_ms,
            env.topic,
            env.webhook_id,
            result,
            calls=calls,
            notes=notes,
            reason=reason,
        )
    )


@dataclass
class _Outcome:
    """One webhook's calls, encoded and checked, and the dead letters among them: applied to
    the batch's commit only once the whole webhook went through."""

    # (outbox entry, call name, call type, person hash, messageId)
    entries: list[tuple[bytes, str, str, str, str]]
    invalid: list[DeadLetter]
    # Calls identity held back, per person (person, event, outcome, why): DecisionView.notes
    notes: list[tuple[str, str, str, str]] = field(default_factory=list)
    # The invalid calls' ledger entries (person hash, call name, messageId, why)
    refused: list[tuple[str, str, str, str]] = field(default_factory=list)

    def apply(self, commit: Commit, shop: str, env: Envelope) -> None:
        at, topic = env.received_ms, env.topic
        produced: dict[str, int] = {}
        for letter in self.invalid:
            log_dead_letter(letter)
            commit.letters.append(letter)
            commit.count("calls:invalid")
            produced["invalid"] = produced.get("invalid", 0) + 1
        for person, name, mid, why in self.refused if commit.ledger_keep else ():
            commit.ledger.append(
                (
                    person,
                    ops_records.ledger_entry(
                        at, name, ops_records.DEAD, message_id=mid, reason=why, topic=topic
                    ),
                )
            )
        for entry, name, kind, _person, _mid in self.entries:
            commit.calls.append(entry)
            commit.count(f"events:{name}:queued")
            if kind == "track":
                volume.record(commit, shop, name, env.received_ms)  # issue 6
            produced[name] = produced.get(name, 0) + 1
            # A queued call reaches its person's ledger when delivery settles it (delivered,
            # held, dead-lettered): a "queued" entry as well cost every journey three more
            # Redis commands (LPUSH, LTRIM, EXPIRE) for a state that lasts milliseconds.
        held: dict[str, int] = {}
        for person, event, outcome, why in self.notes:
            held[outcome] = held.get(outcome, 0) + 1
            if not commit.ledger_keep:
                continue
            commit.ledger.append(
                (
                    keyed.person_hash(person),
                    ops_records.ledger_entry(at, event, outcome, reason=why, topic=topic),
                )
            )
        _log_webhook(commit, env, "processed", calls=produced, notes=held)


def _decide_one(
    shop: str, env: Envelope, m: Mapped, view: DecisionView, policy: Policy
) -> _Outcome:
    """Decide one webhook and encode its calls. Raises whatever goes wrong (the caller parks
    the webhook); a call Pipelines would refuse is a dead letter of its own, not a failure."""
    outcome = _Outcome([], [])
    if m.skipped:
        return outcome
    hashes: dict[str, str] = {}  # person -> keyed hash: a webhook's calls are mostly one person's
    for out in decide(m, view, policy, parse_time(env.triggered_at)):
        call = out.call
        try:
            raw_call = validate_call(call)
        except InvalidCall as exc:
            entry = OutboxEntry(orjson.dumps(call), env.received_ms, out.person, out.guards)
            why = redact(f"invalid call: {exc}")[:MAX_REASON_CHARS]
            outcome.invalid.append(call_letter(shop, entry.encode(), why))
            if out.person:  # dead-lettered here, never queued: its person's ledger says so
                name = str(call.get("event") or call.get("type") or "call")
                mid = str(call.get("messageId") or "")
                outcome.refused.append((keyed.person_hash(out.person), name, mid, why))
            continue
        name = call.get("event") or call["type"]
        person = hashes.get(out.person)
        if person is None:
            person = hashes[out.person] = keyed.person_hash(out.person)
        # `OutboxEntry(...).encode()` without the named tuple in between (one per call queued).
        header = wire.OutboxHeader(
            env.received_ms, out.person, person, out.guards, out.kind, name, env.topic
        )
        mid = str(call.get("messageId") or "")
        # Calls of nobody in particular get no ledger.
        ledger = person if out.person else ""
        outcome.entries.append(
            (wire.encode_outbox_entry(header, raw_call), name, call["type"], ledger, mid)
        )
    return outcome
