"""Redis: the inbound queue, the outbox, leases and the bridge's counters.

Every key is scoped by shop (`cb:{shop}:...`, bridge/store/keys.py), so one shop's work never
mixes with another's and a batch can never carry two write keys.

Queues are at-least-once: a consumer moves items from a list into its shop's `work` list in one
script and removes them in the same MULTI that writes what they produced, so a crash at any
instant means a redo (same messageIds), never a loss.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar, cast

import msgspec
import redis
from redis.connection import parse_url

from bridge.store import scripts
from bridge.store.cluster import (
    ClusterPending,
    ClusterRawPipeline,
    ClusterTransaction,
    client_options,
    connect_cluster,
    is_cluster,
    redirection,
)
from bridge.store.deadletters import DeadLetterRecord, DeadLetterStore, stage
from bridge.store.keys import REJECTED_KEY, SHOPS_KEY, Keys, shop_keys
from bridge.store.monitoring import MonitorStore
from bridge.store.ops import (
    WEBHOOK_LOG_SIZE,
    OpsStore,
    ledger_commands,
    long_ledgers,
    long_webhook_log,
    marks_commands,
    webhook_counts,
    webhook_log_commands,
)
from bridge.store.resp import Pending, PendingTransaction, RawPipeline
from bridge.store.shopdata import ShopData
from bridge.store.tally import Tally
from bridge.store.wire import Envelope

__all__ = [
    "REJECTED_KEY",
    "SHOPS_KEY",
    "Keys",
    "RawPipeline",
    "shop_keys",
]

INGEST_DUPLICATE = 0
INGEST_QUEUED = 1
INGEST_QUEUED_WAKE = 2  # queued, and no drain job is known to be pending: enqueue one

# A pending-job flag older than this is presumed lost (its enqueue failed, or its worker was
# killed); the next webhook or the worker's ticker re-enqueues it.
FLAG_STALE_MS = 15_000

SHOP_REGISTER_EVERY_MS = 60_000

# How long a webhook id's seen-marker is kept, unless the caller says (WEBHOOK_DEDUPE_TTL_S).
DEDUPE_TTL_S = 72 * 3600


# Any failure talking to Redis (connection, timeout, a refused command), as the bridge names it:
# parts outside the store catch this, never a redis-py class.
StoreError = redis.RedisError


def connect(url: str, *, tls_verify: bool = False, timeout_s: float = 5.0) -> redis.Redis[bytes]:
    """A client for REDIS_URL; `rediss://` accepts Heroku's self-signed certificate by default."""
    return redis.Redis.from_url(
        url, **client_options(url, tls_verify=tls_verify, timeout_s=timeout_s)
    )


def open_store(
    settings: Any, *, timeout_s: float = 5.0, client: redis.Redis[bytes] | None = None
) -> Store:
    """The store of the bridge's data: on the Redis Cluster `DATA_REDIS_URL` names when set
    (store/cluster.py), else on REDIS_URL (`client`, when the caller has one for it already).
    `settings` is a `bridge.config.settings.Settings` (not imported: the settings import this
    module)."""
    url: str = settings.data_redis_url
    if url:
        cluster = connect_cluster(url, tls_verify=settings.redis_tls_verify, timeout_s=timeout_s)
        # The store asks of its client only what RedisCluster also does (per-key commands,
        # one slot's MULTIs, scripts, SCAN over every master).
        return Store(cast("redis.Redis[bytes]", cluster))
    if client is None:
        client = connect(
            settings.redis_url, tls_verify=settings.redis_tls_verify, timeout_s=timeout_s
        )
    return Store(client)


def check_url(url: str) -> None:
    """Raises ValueError unless `connect` can use `url` (its scheme, host, port and database)."""
    parse_url(url)


def now_ms() -> int:
    return int(time.time() * 1000)


log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another worker holds the lease now: this one must not write its results."""


LetterT = TypeVar("LetterT", bound=DeadLetterRecord)


@dataclass
class Settlement(Generic[LetterT]):
    """What one delivery round writes, in one MULTI guarded by the delivery lease.

    `remaining` becomes the new in-flight window (calls neither settled nor held: paused, or
    stopping); `held` appends each waiting person's calls to their hold list with a due time and
    retry state; `clear` forgets the retry state of people whose calls went through.
    """

    remaining: list[bytes] = field(default_factory=list)
    held: list[tuple[str, list[bytes], int, bytes]] = field(default_factory=list)
    clear: set[str] = field(default_factory=set)
    letters: list[LetterT] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    # issue 18 (store/ops.py): (person hash, entry) for people's ledgers; when things happened
    ledger: list[tuple[str, bytes]] = field(default_factory=list)
    ledger_keep: int = 50  # entries kept per person (OPS_LEDGER_CALLS; 0: none written)
    marks: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        if n:
            self.counters[name] = self.counters.get(name, 0) + n


@dataclass
class Commit:
    """What one processed batch writes, all in one MULTI with the removal of its work list."""

    calls: list[bytes] = field(default_factory=list)
    state_set: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # key -> (value, ttl s)
    state_del: set[str] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=dict)
    # Webhooks that cannot be processed, as dead letters (delivery/deadletters.py).
    letters: list[DeadLetterRecord] = field(default_factory=list)
    # issue 6: per-event volume buckets and last-seen times (monitoring/volume.py `record`)
    hash_incr: dict[tuple[str, str], int] = field(default_factory=dict)  # (key, field) -> n
    # Written with the counters (store/tally.py), not in the commit's MULTI.
    hash_set: dict[tuple[str, str], int] = field(default_factory=dict)  # (key, field) -> value
    compliance: list[bytes] = field(default_factory=list)  # encoded ComplianceRequests (issue 7)
    seen: list[str] = field(default_factory=list)  # seen-markers of the batch's webhooks
    seen_ttl_s: int = 72 * 3600
    # The seen-markers of the webhooks processed, whether marked or claimed: the drain hands
    # them to the next batch (`processed` of worker/processor.py), not to Redis.
    processed: set[str] = field(default_factory=set)
    retried: bool = False  # the batch ends a run of failed tries: clear their count
    # issue 18 (store/ops.py): people's ledgers (person hash, entry), the webhook log's
    # entries and each webhook's arrival (ms) for the webhook charts
    ledger: list[tuple[str, bytes]] = field(default_factory=list)
    ledger_keep: int = 50  # entries kept per person (OPS_LEDGER_CALLS; 0: none written)
    webhook_log: list[bytes] = field(default_factory=list)
    webhooks_at: list[int] = field(default_factory=list)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


def _ops_commands(
    shop: str,
    ledger: Sequence[tuple[str, bytes]],
    hooks: Sequence[bytes],
    marks: Mapping[str, int] | None = None,
    *,
    keep: int = 50,
) -> list[tuple[Any, ...]]:
    """The ops console's records (store/ops.py), staged in a MULTI the caller sends anyway.
    The ledgers and the webhook log get no LTRIM: the caller has the tally trim those the
    MULTI's replies show past their size (`long_ledgers`, `long_webhook_log`), one in many
    batches rather than every one."""
    return [
        *(ledger_commands(shop, ledger, keep=keep, trim=False) if keep > 0 else []),
        *webhook_log_commands(shop, hooks, trim=False),
        *marks_commands(shop, marks or {}),
    ]


class CommandList:
    """Commands collected for RawPipeline; also takes the pipeline methods that
    `deadletters.stage` calls (hset, zadd)."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def add(self, *command: Any) -> None:
        self.commands.append(command)

    def hset(self, key: str, name: str, value: bytes | str | int) -> None:
        self.add("HSET", key, name, value)

    def zadd(self, key: str, mapping: Mapping[str, int | float]) -> None:
        for member, score in mapping.items():
            self.add("ZADD", key, score, member)


class BrowseAccepted(NamedTuple):
    """What queueing one pixel event found: whether to wake a drain, and the requests its IP,
    its browser and its shop made in the rate-limit window so far (this one included; 0:
    unknown)."""

    wake: bool
    ip_requests: int
    client_requests: int
    shop_requests: int = 0


# The rate-limit hash's field counting a whole shop's collector requests (the IP and browser
# fields are "ip:<hash>" and "c:<hash>", so no hash can name it).
SHOP_LIMIT_FIELD = "shop"


# A rate-limit window's hash outlives its window by this much (a late request still counts).
PIXEL_LIMIT_GRACE_S = 60


class Accepted(NamedTuple):
    """What queueing one webhook found: its id already claimed (an earlier copy queued or
    processed within the dedupe TTL), and whether to wake a drain."""

    seen_before: bool
    wake: bool


def _take(k: Keys, n: int) -> tuple[Any, ...]:
    return ("EVAL", scripts.TAKE_INBOUND, 2, k.inbound, k.inbound_work, n)


def _moves(k: Keys, n: int) -> list[tuple[Any, ...]]:
    return [("LMOVE", k.inbound, k.inbound_work, "LEFT", "RIGHT")] * n


def _checked(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply


def _moved(reply: Any) -> list[bytes]:
    return list(_checked(reply) or [])


def _each_moved(replies: list[Any]) -> list[bytes]:
    return [m for m in replies if _checked(m) is not None]


class Begun(NamedTuple):
    """A drain's start: the work list left by an unfinished drain (`resumed`), the webhooks
    moved in behind it, how many drains in a row found that work list (0: none was left) and
    the batch size the last of them tried (0: the whole list)."""

    resumed: list[bytes]
    moved: list[bytes]
    tries: int
    size: int


class PendingTake:
    """A take sent; `result` gives the webhooks it moved (raises a Redis error)."""

    __slots__ = ("_pending",)

    def __init__(self, pending: Pending | ClusterPending) -> None:
        self._pending = pending

    def result(self) -> list[bytes]:
        replies = self._pending.result()
        if len(replies) == 1 and not isinstance(replies[0], bytes | None):
            return _moved(replies[0])  # the script's list
        return _each_moved(replies)


class PendingCommit:
    """A drain commit sent; `result` raises if it failed, else tells whether it set the
    delivery flag (see `Store.commit_drain`)."""

    __slots__ = ("_counted", "_pending", "_wakes")

    def __init__(
        self,
        pending: PendingTransaction | ClusterTransaction,
        *,
        wakes: bool,
        counted: Callable[[list[Any]], None],
    ) -> None:
        self._pending = pending
        self._wakes = wakes
        # Adds the batch's counters to the tally once it committed (given EXEC's replies).
        self._counted = counted

    def result(self) -> bool:
        replies = self._pending.result()
        self._counted(replies)
        return self._wakes and replies[-1] is not None


def _ingest_arguments(env: Envelope) -> dict[str, list[Any]]:
    """The INGEST script's keys and arguments for one webhook."""
    k = Keys(env.shop)
    return {
        "keys": [k.seen(env.webhook_id), k.inbound, k.drain_flag, k.stats, k.claim(env.webhook_id)],
        "args": [env.encode(), env.received_ms or now_ms(), FLAG_STALE_MS, "webhooks:" + env.topic],
    }


def _stage_settlement(
    cmds: CommandList, shop: str, k: Keys, s: Settlement[Any]
) -> tuple[list[tuple[Any, ...]], int]:
    """A delivery round's writes (`Store.settle_outbox`), added to `cmds`; the ops console's
    commands and where they start among them (for their replies)."""
    # The window's key never vanishes mid-script while calls remain: on a Redis Cluster whose
    # slot is MIGRATING, a script's command on a key that is missing on the source is refused
    # ("non local key"), so DEL then RPUSH would lose `remaining`.
    if s.remaining:
        for i in range(0, len(s.remaining), 1000):
            cmds.add("RPUSH", k.outbox_work, *s.remaining[i : i + 1000])
        cmds.add("LTRIM", k.outbox_work, -len(s.remaining), -1)
    else:
        cmds.add("DEL", k.outbox_work)
    for h, entries, due, meta in s.held:
        for i in range(0, len(entries), 1000):
            cmds.add("RPUSH", k.held(h), *entries[i : i + 1000])
        cmds.zadd(k.out_due, {h: due})
        cmds.hset(k.out_meta, h, meta)
    clear = sorted(s.clear)
    for i in range(0, len(clear), 1000):  # IF_HELD unpacks each command: Lua's limit is ~8000
        cmds.add("HDEL", k.out_meta, *clear[i : i + 1000])
    stage(cmds, shop, s.letters, now_ms())
    ops = _ops_commands(shop, s.ledger, (), s.marks, keep=s.ledger_keep)
    first = len(cmds.commands)
    cmds.commands += ops
    return ops, first


# How long a delivery round's settlement keeps being sent while a migration of the shop's slot
# refuses it (TRYAGAIN, store/cluster.py): a slot with many keys takes longer to move than one
# command's REDIRECT_DEADLINE_S.
SETTLE_MIGRATION_WAIT_S = 120.0


def if_held(lease: str, token: str, commands: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """One EVAL of `scripts.IF_HELD`: `commands` run only while `lease` holds `token`. Each
    command's keys are declared: its first argument, or all of them for DEL."""
    keys: dict[Any, None] = {lease: None}
    args: list[Any] = [token, len(commands)]
    for command in commands:
        keys.update(dict.fromkeys(command[1:] if command[0] == "DEL" else command[1:2]))
        args.append(len(command))
        args += command
    return ("EVAL", scripts.IF_HELD, len(keys), *keys, *args)


# Every Store of the process, so that their unwritten counters are written at exit.
_LIVE_STORES: weakref.WeakSet[Store] = weakref.WeakSet()


def flush_every_store() -> None:
    """Write the unwritten counters of every Store of this process (at a clean exit; the
    tests, between one test's Redis and the next's). A Redis that is gone loses them."""
    for store in list(_LIVE_STORES):
        # Any error: a Redis gone surfaces as a RedisError, a RedisClusterException, even an
        # AttributeError inside redis-py's cluster client; one Store's must not stop the others.
        with contextlib.suppress(Exception):
            store.flush_counters(force=True)


atexit.register(flush_every_store)


class Store:
    """Queue and counter operations over one Redis client. Raises redis errors as they come."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self.redis = client
        self.cluster = is_cluster(client)
        self._ingest = client.register_script(scripts.INGEST)
        # One pipelined connection per thread; on a cluster, one per master (store/cluster.py).
        self._raw: RawPipeline | ClusterRawPipeline = (
            ClusterRawPipeline(cast("Any", client)) if self.cluster else RawPipeline(client)
        )
        # Counters of commits and settles, written once a second (store/tally.py).
        self.tally = Tally()
        # The thread that writes the counters of a process with no ticker (a web process):
        # running while the tally holds counts, started again by the next count.
        self._writer_lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._writer_pid = 0
        self._flush_lock = threading.Lock()
        _LIVE_STORES.add(self)
        self._registered: dict[str, int] = {}  # shop -> when this process last wrote SHOPS_KEY
        self._limit_windows: dict[str, int] = {}  # shop -> the pixel limit window last expired
        self._finish = client.register_script(scripts.FINISH)
        self._release_and_finish = client.register_script(scripts.RELEASE_AND_FINISH)
        self._release = client.register_script(scripts.RELEASE)
        self._renew = client.register_script(scripts.RENEW)
        self._take_outbox = client.register_script(scripts.TAKE_OUTBOX)
        self.dead_letters = DeadLetterStore(client)
        self.monitoring = MonitorStore(client)
        self.shop_data = ShopData(client)
        self.ops = OpsStore(client)

    # --- request path -------------------------------------------------------------------
    def accept(self, env: Envelope, dedupe_ttl_s: int = DEDUPE_TTL_S) -> Accepted:
        """Queue a verified webhook and claim its webhook id: one round trip of plain commands
        (see RawPipeline).

        The webhook id's claim (`Keys.claim`) is set here (NX) to a fresh token that the queued
        copy carries (`Envelope.claim`), rather than the seen-marker looked up here and written
        by the drain's commit: the drain processes the copy the claim names and skips any other
        as a duplicate. One command a webhook fewer, and a redelivery is answered as a
        duplicate as soon as the first copy is queued, not only once it was processed."""
        k = shop_keys(env.shop)
        at = env.received_ms or now_ms()
        claim = secrets.token_hex(6)
        marker = k.claim(env.webhook_id)
        commands: list[tuple[Any, ...]] = [
            ("RPUSH", k.inbound, msgspec.structs.replace(env, claim=claim).encode()),
            ("SET", marker, claim, "NX", "EX", dedupe_ttl_s),
            ("SET", k.drain_flag, at, "NX", "PX", FLAG_STALE_MS),
        ]
        # The shop set (the worker's ticker walks it) is written by each process once a
        # minute per shop rather than once a webhook; it is re-written after a Redis restart.
        registered = self._registered.get(env.shop, 0)
        if at - registered > SHOP_REGISTER_EVERY_MS or at < registered:
            commands.append(("SADD", SHOPS_KEY, env.shop))
        pushed, claimed, flag, *registering = self._raw.pipeline(*commands)
        if isinstance(pushed, Exception):
            # Not queued (out of memory, a read-only replica...): the caller 503s. A marker set
            # all the same would name a copy that does not exist and make Shopify's retry a
            # duplicate: it goes (best effort; in practice a write refused for the push is
            # refused for the marker too).
            if claimed is not None and not isinstance(claimed, Exception):
                with contextlib.suppress(Exception):
                    self._raw.pipeline(("DEL", marker))
            raise pushed
        # Counted in the tally, written within a second by this process (`_write_counters_soon`):
        # one HINCRBY a second per topic rather than one a webhook.
        self.tally.add((((k.stats, f"webhooks:{env.topic}:accepted"), 1),))
        self._write_counters_soon()
        if registering and not isinstance(registering[0], Exception):
            self._registered[env.shop] = at
        woke = flag is not None and not isinstance(flag, Exception)
        return Accepted(seen_before=claimed is None, wake=woke)

    def accept_browse(
        self,
        env: Envelope,
        limits: tuple[int, int, str, str],
        counts: Mapping[tuple[str, str], int] | None = None,
    ) -> BrowseAccepted:
        """Queue a storefront pixel event (issue 17) in one round trip of plain commands, as
        `accept` does a webhook (no seen-marker: see worker/processor.py), with the request
        counts of its IP, its browser and its shop in the same trip (its `received` count is
        the drain's, one HINCRBY a batch rather than one a request). `limits` is (window
        number, window seconds, IP field, browser field); `counts` are other counters to add
        on the way,
        ((shop or "" for REJECTED_KEY), field) -> n. Raises a Redis error when not queued."""
        k = shop_keys(env.shop)
        at = env.received_ms or now_ms()
        window, window_s, ip_field, client_field = limits
        limit_key = k.pixel_limits(window)
        commands: list[tuple[Any, ...]] = [
            ("RPUSH", k.inbound, env.encode()),
            ("SET", k.drain_flag, at, "NX", "PX", FLAG_STALE_MS),
            ("HINCRBY", limit_key, ip_field, 1),
            ("HINCRBY", limit_key, client_field, 1),
            ("HINCRBY", limit_key, SHOP_LIMIT_FIELD, 1),
        ]
        # Each process sets a window's expiry on its first request in it (EXPIRE NX: once).
        if self._limit_windows.get(env.shop) != window:
            commands.append(("EXPIRE", limit_key, window_s + PIXEL_LIMIT_GRACE_S, "NX"))
        for (shop, name), n in (counts or {}).items():
            commands.append(("HINCRBY", shop_keys(shop).stats if shop else REJECTED_KEY, name, n))
        registered = self._registered.get(env.shop, 0)
        if at - registered > SHOP_REGISTER_EVERY_MS or at < registered:
            commands.append(("SADD", SHOPS_KEY, env.shop))
        replies = self._raw.pipeline(*commands)
        pushed, flag, ip_count, client_count, shop_count = replies[:5]
        if isinstance(pushed, Exception):
            raise pushed
        self._limit_windows[env.shop] = window
        if commands[-1][0] == "SADD" and not isinstance(replies[-1], Exception):
            self._registered[env.shop] = at
        return BrowseAccepted(
            wake=flag is not None and not isinstance(flag, Exception),
            ip_requests=ip_count if isinstance(ip_count, int) else 0,
            client_requests=client_count if isinstance(client_count, int) else 0,
            shop_requests=shop_count if isinstance(shop_count, int) else 0,
        )

    def add_counts(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Counters kept by a web process and written together: ((shop or "" for
        REJECTED_KEY), field) -> n, in one round trip."""
        if counts:
            self._raw.pipeline(
                *(
                    ("HINCRBY", shop_keys(shop).stats if shop else REJECTED_KEY, name, n)
                    for (shop, name), n in counts.items()
                )
            )

    def ingest(self, env: Envelope) -> int:
        """Queue a webhook unless its id was processed or claimed by a queued copy (`accept`).
        Returns an INGEST_* code.

        For backfill and reconcile, which report duplicates; the web uses `accept`. A webhook
        that woke its shop has the shop added to SHOPS_KEY before this returns: not in the
        script, whose keys must all be the shop's (one cluster slot)."""
        code = int(self._ingest(**_ingest_arguments(env)))
        if code == INGEST_QUEUED_WAKE:
            self.redis.sadd(SHOPS_KEY, env.shop)
        return code

    def ingest_many(self, envs: list[Envelope]) -> list[int]:
        """`ingest` for many webhooks in two round trips (the backfill's batches): the scripts,
        then SHOPS_KEY for the shops they woke."""
        pipe = self.redis.pipeline(transaction=False)
        for env in envs:
            arguments = _ingest_arguments(env)
            if self.cluster:  # a cluster pipeline does not load scripts: the body each time
                keys = arguments["keys"]
                command = ("EVAL", scripts.INGEST, len(keys), *keys, *arguments["args"])
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            else:
                self._ingest(**arguments, client=pipe)
        codes = [int(r) for r in pipe.execute()]
        pairs = zip(envs, codes, strict=True)
        woke = {env.shop for env, code in pairs if code == INGEST_QUEUED_WAKE}
        if woke:
            self.redis.sadd(SHOPS_KEY, *woke)
        return codes

    def count(self, shop: str, name: str, n: int = 1) -> None:
        self.redis.hincrby(Keys(shop).stats, name, n)

    def count_untrusted(self, shop: str, name: str, *, configured: bool) -> None:
        """Count a rejection of a request not (yet) trusted: in the shop's stats when the shop
        is configured or known (SHOPS_KEY), else in REJECTED_KEY. So a botched secret rotation
        shows per shop in /metrics, while unsigned requests naming made-up shops cannot create
        a stats hash (or a metrics series) per made-up shop. Two commands, not one script:
        SHOPS_KEY and the shop's stats are in different cluster slots."""
        if configured or self.redis.sismember(SHOPS_KEY, shop):
            self.redis.hincrby(Keys(shop).stats, name, 1)
        else:
            self.redis.hincrby(REJECTED_KEY, name, 1)

    def count_unverified(self, name: str) -> None:
        """Count a request refused before its shop could even be read (REJECTED_KEY)."""
        self.redis.hincrby(REJECTED_KEY, name, 1)

    def ping(self) -> None:
        """Raises StoreError when Redis does not answer."""
        self.redis.ping()

    # --- leases ---------------------------------------------------------------------------
    def acquire(self, key: str, token: str, ttl_ms: int) -> bool:
        return bool(self.redis.set(key, token, nx=True, px=ttl_ms))

    def renew(self, key: str, token: str, ttl_ms: int) -> bool:
        return bool(self._renew(keys=[key], args=[token, ttl_ms]))

    def release(self, key: str, token: str) -> None:
        self._release(keys=[key], args=[token])

    def holds(self, key: str, token: str) -> bool:
        """Whether the lease `key` is `token`'s now (a token is never reused, so a lease that was
        lost in between is not `token`'s again)."""
        return bool(self.redis.get(key) == token.encode())

    def wake(self, flag_key: str) -> bool:
        """Set a pending flag unless a fresh one exists; True means the caller must enqueue."""
        return bool(self.redis.set(flag_key, now_ms(), nx=True, px=FLAG_STALE_MS))

    # --- inbound --------------------------------------------------------------------------
    def take_inbound(self, shop: str, n: int) -> list[bytes]:
        """The drain's first batch: its work list (a crashed drain's batch, resumed) followed by
        up to `n` webhooks moved there from the inbound queue, in one round trip.

        The moves are one script (`scripts.TAKE_INBOUND`) that stops at an empty queue: it
        copies each body into Lua and out again, which costs less than the LMOVEs a full batch
        of plain ones sent for nothing under light traffic (BENCHMARKS.md, Redis cost)."""
        k = Keys(shop)
        resumed, moved = self._raw.pipeline(("LRANGE", k.inbound_work, 0, -1), _take(k, n))
        return [*_checked(resumed), *_moved(moved)]

    def begin_drain(self, shop: str, n: int) -> Begun:
        """`take_inbound`, also counting a try on a work list a drain before left unfinished
        (`Begun`); one round trip. The script touches no body: it counts and reads one hash."""
        k = Keys(shop)
        tries, resumed, moved = self._raw.pipeline(
            ("EVAL", scripts.BEGIN_DRAIN, 2, k.inbound_work, k.drain_tries),
            ("LRANGE", k.inbound_work, 0, -1),
            _take(k, n),
        )
        count, size = _checked(tries)
        return Begun(_checked(resumed), _moved(moved), int(count), int(size))

    def set_try_size(self, shop: str, size: int) -> None:
        """Record the batch size a drain is about to try on an unfinished work list."""
        self.redis.hset(Keys(shop).drain_tries, "size", size)

    def send_take(self, shop: str, n: int, *, backlog: bool = False) -> PendingTake:
        """Move up to `n` more webhooks to the end of the work list, without waiting: the
        drain's next batch, taken while it processes the one before (see `send_commit`).

        With `backlog` (the last take was a full batch, so more are likely queued) as `n`
        plain LMOVEs, which each find a webhook and copy no body through Lua: measured faster
        on a backlog than the script (BENCHMARKS.md, Redis cost); else the script, which
        stops at an empty queue."""
        k = Keys(shop)
        return PendingTake(self._raw.send(*(_moves(k, n) if backlog else [_take(k, n)])))

    def wait_inbound(self, shop: str, timeout_s: float) -> bytes | None:
        """Wait up to `timeout_s` for a webhook and move it to the end of the work list (one
        BLMOVE): a lingering drain's next batch. None when none came."""
        k = Keys(shop)
        moved = self.redis.blmove(k.inbound, k.inbound_work, timeout_s, "LEFT", "RIGHT")
        return moved if isinstance(moved, bytes) else None

    def finish_drain(self, shop: str) -> bool:
        """Clear the drain flag if the inbound queue is empty; True when work remains."""
        k = Keys(shop)
        return bool(
            self._finish(
                keys=[k.inbound, k.inbound_work, k.drain_flag], args=[now_ms(), FLAG_STALE_MS]
            )
        )

    def commit_drain(self, shop: str, commit: Commit, taken: int | None = None) -> bool:
        """Atomically: state writes, outbox appends, parked webhooks, counters, and the batch
        gone from the work list (all of it, or its first `taken` entries). When calls were
        queued, the delivery flag is set too: True means it was not set before, so the caller
        must have the shop delivered (as `wake` says)."""
        woke = self.send_commit(shop, commit, taken).result()
        self.flush_counters(force=True)
        return woke

    def send_commit(self, shop: str, commit: Commit, taken: int | None = None) -> PendingCommit:
        """`commit_drain` without waiting for the outcome: `result()` raises if it failed.

        One MULTI of a few thousand commands per batch: packed directly (RawPipeline), since
        redis-py's pipeline spends ~10 us of Python on each command. With `taken`, only the
        batch's own entries leave the work list: the next batch, already moved behind them,
        stays there until its own commit."""
        k = Keys(shop)
        cmds = CommandList()
        # The bulk of a batch's commands (~6 records and a seen-marker an order), listed
        # without a method call each.
        cmds.commands += [
            ("SET", key, value, "EX", ttl) for key, (value, ttl) in commit.state_set.items()
        ]
        seen_ttl_s = commit.seen_ttl_s
        cmds.commands += [("SET", key, 1, "EX", seen_ttl_s) for key in commit.seen]
        if commit.state_del:
            cmds.add("DEL", *commit.state_del)
        if commit.calls:
            cmds.add("RPUSH", k.outbox, *commit.calls)
        if commit.letters:
            stage(cmds, shop, commit.letters, now_ms())
        if commit.compliance:
            cmds.add("RPUSH", k.compliance, *commit.compliance)
        for command in _ops_commands(
            shop, commit.ledger, commit.webhook_log, keep=commit.ledger_keep
        ):
            cmds.add(*command)
        if commit.retried:
            cmds.add("DEL", k.drain_tries)
        if taken is None:
            cmds.add("DEL", k.inbound_work)
        else:
            cmds.add("LTRIM", k.inbound_work, taken, -1)
        if commit.calls:
            cmds.add("SET", k.deliver_flag, now_ms(), "NX", "PX", FLAG_STALE_MS)
        # The counters and volume buckets go to the tally once the commit went through (a failed
        # commit is retried whole, and must not count twice).
        # The webhook charts' buckets (store/ops.py) likewise.
        counts = [*(((k.stats, name), n) for name, n in commit.counters.items())]
        counts += commit.hash_incr.items()
        arrivals, expiry = webhook_counts(shop, commit.webhooks_at)
        counts += arrivals.items()
        keep = commit.ledger_keep

        def counted(replies: list[Any]) -> None:
            self.tally.add(counts, expiry, commit.hash_set)
            if commit.ledger:
                self.tally.trim(long_ledgers(shop, cmds.commands, replies, keep), keep)
            if commit.webhook_log:
                self.tally.trim(long_webhook_log(shop, cmds.commands, replies), WEBHOOK_LOG_SIZE)

        return PendingCommit(
            self._raw.send_transaction(cmds.commands), wakes=bool(commit.calls), counted=counted
        )

    # --- counters -------------------------------------------------------------------------
    def _write_counters_soon(self) -> None:
        """Make sure this process writes the tally within a second (a web process has no
        ticker; a worker's ticker flushes too, which does no harm)."""
        with self._writer_lock:  # the writer ends under this lock, only with nothing counted
            if self._writer is not None and self._writer_pid == os.getpid():
                return
            writer = threading.Thread(target=self._write_counters, name="counters", daemon=True)
            try:
                writer.start()
            except RuntimeError:  # no thread to be had: the next count tries again (queued is
                log.warning("counters writer not started")  # queued: never fail the request)
                return
            self._writer, self._writer_pid = writer, os.getpid()  # a forked child starts its own

    def _write_counters(self) -> None:
        """Flush once a second while there are counts; end once the tally is empty (the next
        count starts another: an idle process keeps no thread, nor a closed Store one)."""
        failing = False  # one warning an outage, not one a second
        while True:
            time.sleep(self.tally.interval_s)
            try:
                self.flush_counters()
            except Exception as err:  # never let the writer die with counts left behind
                if not failing:
                    log.warning("counters not written yet: %s", type(err).__name__)
                failing = True
            else:
                if failing:
                    log.info("counters written again")
                failing = False
            with self._writer_lock:
                if not len(self.tally):
                    self._writer = None
                    return

    def flush_counters(self, *, force: bool = False) -> None:
        """Write the tally's counters in one pipeline: when a second has passed since the last
        flush, or now with `force` (a drain's or delivery's end, a stop). Raises redis errors,
        the counts kept for the next flush. One flush at a time: a flush that returns has
        nothing of an earlier one still on its way."""
        with self._flush_lock:
            self._flush_counters(force)

    def _flush_counters(self, force: bool) -> None:
        if not (self.tally.due() or (force and len(self.tally))):
            return
        counts, expiry, latest, trims = self.tally.take()
        # redis-py's pipeline, not the RawPipeline: the delivery thread flushes too, and the
        # drain's pipelined replies may be in flight on the RawPipeline's connection.
        pipe = self.redis.pipeline(transaction=False)
        for (key, name), n in counts.items():
            pipe.hincrby(key, name, n)
        by_key: dict[str, dict[str, int]] = {}
        for (key, name), v in latest.items():
            by_key.setdefault(key, {})[name] = v
        for key, fields in by_key.items():
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        for key, at in expiry.items():
            pipe.expireat(key, at)
        for key, keep in trims.items():
            pipe.ltrim(key, 0, keep - 1)
        try:
            replies = pipe.execute(raise_on_error=False)
        except BaseException:
            # Redis away: tried again at the next flush (a connection lost after Redis ran
            # part of the pipeline counts that part twice, which counters can bear).
            self.tally.add(counts.items(), expiry, latest)
            for key, keep in trims.items():
                self.tally.trim((key,), keep)
            raise
        refused = [r for r in replies if isinstance(r, Exception)]
        if refused:  # a key of another type: no retry would help
            log.warning("counters not written: %d refused by Redis", len(refused))

    # --- outbox ---------------------------------------------------------------------------
    def take_window(
        self, shop: str, max_bytes: int, max_count: int, *, max_scan: int = 5000
    ) -> tuple[list[bytes], int]:
        """The in-flight window (resumed or newly taken) and how many entries the outbox holds."""
        k = Keys(shop)
        window, left = self._take_outbox(
            keys=[k.outbox, k.outbox_work, k.out_due],
            args=[max_bytes, max_count, now_ms(), k.out_held, max_scan],
        )
        return list(window), int(left)

    def retry_state(self, shop: str, hashes: Sequence[str]) -> dict[str, bytes]:
        if not hashes:
            return {}
        values = self.redis.hmget(Keys(shop).out_meta, list(hashes))
        return {h: v for h, v in zip(hashes, values, strict=True) if v}

    def settle_outbox(self, shop: str, lease_token: str, s: Settlement[Any]) -> None:
        """Write a round's outcome atomically, unless the lease changed hands (LeaseLost).

        One script (`scripts.IF_HELD`) runs the writes only while the delivery lease holds
        this round's token. It replaced a WATCH on the lease key around a MULTI: the lease
        keeper's renewal tripped it (tried again up to five times, then LeaseLost), and the
        window, delivered but not settled, then went out again.

        On a Redis Cluster whose slot for the shop is migrating, a settlement naming a key that
        does not exist yet (a new person's ledger, a first held list) is refused with TRYAGAIN
        until the migration ends: while the cluster redirects it, it is sent again for up to
        SETTLE_MIGRATION_WAIT_S, since giving up sends the delivered window again."""
        k = Keys(shop)
        cmds = CommandList()
        ops, first = _stage_settlement(cmds, shop, k, s)
        settle = if_held(k.deliver_lease, lease_token, cmds.commands)
        deadline = time.monotonic() + SETTLE_MIGRATION_WAIT_S
        reply = self._raw.pipeline(settle)[0]
        while redirection(reply) is not None and time.monotonic() < deadline:
            reply = self._raw.pipeline(settle)[0]  # the cluster client waited before answering
        if reply is None:
            raise LeaseLost(shop)
        replies = list(_checked(reply))
        for each in replies:
            _checked(each)  # a command refused (WRONGTYPE): the window is tried again
        self.tally.add(((k.stats, name), n) for name, n in s.counters.items())
        if s.ledger:
            long = long_ledgers(shop, ops, replies[first : first + len(ops)], s.ledger_keep)
            self.tally.trim(long, s.ledger_keep)
        self.flush_counters()

    def next_due_ms(self, shop: str) -> int | None:
        """When the earliest waiting person's retry is due, or None when nobody waits."""
        first = self.redis.zrange(Keys(shop).out_due, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    def ack_outbox(self, shop: str, counters: Mapping[str, int]) -> None:
        k = Keys(shop)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(k.outbox_work)
        for name, n in counters.items():
            pipe.hincrby(k.stats, name, n)
        pipe.execute()

    def replace_outbox_work(self, shop: str, remaining: Sequence[bytes]) -> None:
        """Shrink the in-flight batch to `remaining` (after part of it was sent or set aside)."""
        k = Keys(shop)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(k.outbox_work)
        if remaining:
            pipe.rpush(k.outbox_work, *remaining)
        pipe.execute()

    def finish_deliver(self, shop: str, lease_token: str | None = None) -> bool:
        """Clear the delivery flag if the outbox is empty; True when calls remain. With
        `lease_token`, the delivery lease is let go first in the same script
        (`Lease.release_with`)."""
        k = Keys(shop)
        keys = [k.outbox, k.outbox_work, k.deliver_flag]
        if lease_token is None:
            return bool(self._finish(keys=keys, args=[now_ms(), FLAG_STALE_MS]))
        return bool(
            self._release_and_finish(
                keys=[*keys, k.deliver_lease], args=[now_ms(), FLAG_STALE_MS, lease_token]
            )
        )

    # --- state ----------------------------------------------------------------------------
    def load_state(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """One round trip for every state record a batch needs."""
        names = list(dict.fromkeys(keys))
        if not names:
            return {}
        if self.cluster:
            values = self.redis.mget(names)
        else:
            # On the pipelined connection: redis-py walks every argument of a command in Python
            # (a batch's MGET names ~25 records an order: ~5 us of CPU an order, 2000 orders).
            values = self._raw.pipeline(("MGET", *names))[0]
            if isinstance(values, Exception):
                raise values
        return dict(zip(names, values, strict=True))

    def stats(self, shop: str) -> dict[str, int]:
        """The shop's counters, this process's unwritten ones included (written first)."""
        self.flush_counters(force=True)
        raw = self.redis.hgetall(Keys(shop).stats)
        return {k.decode(): int(v) for k, v in raw.items()}

    def shops(self) -> list[str]:
        return sorted(s.decode() for s in self.redis.smembers(SHOPS_KEY))

    def depth(self, shop: str) -> dict[str, int]:
        k = Keys(shop)
        pipe = self.redis.pipeline(transaction=False)
        for key in (k.inbound, k.inbound_work, k.outbox, k.outbox_work):
            pipe.llen(key)
        pipe.hlen(k.dlq)
        pipe.zcard(k.out_due)
        inbound, inwork, out, outwork, dead, waiting = pipe.execute()
        return {
            "inbound": inbound + inwork,
            "outbox": out + outwork,
            "parked": dead,  # kept for readers of the old name: same as dead_letters
            "dead_letters": dead,
            "waiting_people": waiting,
        }

    def queued_compliance(self, shop: str) -> int:
        """How many committed compliance requests wait to be run."""
        return int(self.redis.llen(Keys(shop).compliance))

    def compliance_requests(self, shop: str) -> list[bytes]:
        """The shop's committed compliance requests, oldest first (encoded)."""
        return list(self.redis.lrange(Keys(shop).compliance, 0, -1))

    def remove_compliance_request(self, shop: str, raw: bytes) -> None:
        """Drop one committed compliance request (once run, or unreadable)."""
        self.redis.lrem(Keys(shop).compliance, 1, raw)

    def append_outbox(self, shop: str, entry: bytes) -> None:
        """Queue one outbox entry after every entry queued before it."""
        self.redis.rpush(Keys(shop).outbox, entry)

    def inbound_length(self, shop: str) -> int:
        """Webhooks in the shop's inbound queue (not yet taken by a drain)."""
        return int(self.redis.llen(Keys(shop).inbound))

    def missing_states(self, shop: str, names: Sequence[str]) -> list[str]:
        """The names among `names` with no state record (one round trip)."""
        if not names:
            return []
        keys = Keys(shop)
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(keys.state(name))
        return [name for name, found in zip(names, pipe.execute(), strict=True) if not found]

    def write_housekeeping(
        self,
        shop: str,
        sets: Mapping[str, tuple[bytes, int]],
        dels: Iterable[str],
        parked: Sequence[bytes],
        counters: Mapping[str, int],
    ) -> None:
        """Identity's housekeeping writes in one MULTI: state records set (value, ttl s) and
        deleted, parked refunds, counters."""
        keys = Keys(shop)
        removed = list(dels)
        pipe = self.redis.pipeline(transaction=True)
        for key, (value, ttl) in sets.items():
            pipe.set(key, value, ex=ttl)
        if removed:
            pipe.delete(*removed)
        if parked:
            pipe.rpush(keys.parked, *parked)
        for name, n in counters.items():
            pipe.hincrby(keys.stats, name, n)
        pipe.execute()

    # --- markers ----------------------------------------------------------------------------
    def claim(self, key: str, ttl_s: int) -> bool:
        """Set the marker `key` for `ttl_s` unless it is set: True when this caller set it (a
        schedule or a once-per-interval run that must start once across processes)."""
        return bool(self.redis.set(key, "1", nx=True, ex=ttl_s))

    def mark(self, key: str, ttl_s: int) -> None:
        """Set the marker `key` for `ttl_s`, set or not."""
        self.redis.set(key, "1", ex=ttl_s)

    # --- delivery's gate and pause ------------------------------------------------------------
    def delivery_start(
        self, shop: str
    ) -> tuple[bytes | None, bytes | None, bytes | None, bytes | None]:
        """`paused` and `delivery_gate` in one MGET: what a delivery reads as it starts."""
        k = Keys(shop)
        paused_at, refused_key, holder, erasing = self.redis.mget(
            [k.paused, k.paused_key, k.deliver_lease, k.erasing]
        )
        return paused_at, refused_key, holder, erasing

    def delivery_gate(self, shop: str) -> tuple[bytes | None, bytes | None]:
        """The delivery lease's token and the erasure lease's, in one round trip."""
        k = Keys(shop)
        holder, erasing = self.redis.mget([k.deliver_lease, k.erasing])
        return holder, erasing

    def pause(self, shop: str, *, key_fingerprint: str, probe_ms: int) -> bool:
        """Pause the shop's delivery (the write key `key_fingerprint` was refused) with no probe
        before `probe_ms`; True when it was not paused before."""
        keys = Keys(shop)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.paused, now_ms(), nx=True)
        pipe.set(keys.paused_key, key_fingerprint)
        pipe.set(keys.paused_probe, 1, px=probe_ms)
        return bool(pipe.execute()[0])

    def paused(self, shop: str) -> tuple[bytes | None, bytes | None]:
        """When the shop's delivery was paused (ms) and the refused key's fingerprint."""
        keys = Keys(shop)
        paused_at, refused_key = self.redis.mget([keys.paused, keys.paused_key])
        return paused_at, refused_key

    def claim_probe(self, shop: str, probe_ms: int) -> bool:
        """True when a paused shop's probe is due (then none is for `probe_ms`)."""
        return bool(self.redis.set(Keys(shop).paused_probe, 1, px=probe_ms, nx=True))

    def resume(self, shop: str) -> None:
        """Lift the shop's pause."""
        keys = Keys(shop)
        self.redis.delete(keys.paused, keys.paused_key, keys.paused_probe)

    # --- the server -------------------------------------------------------------------------
    def eviction_policy(self) -> str | None:
        """Redis's maxmemory-policy (None when it does not say); on a cluster, any master's
        that is not noeviction (one evicting master loses its shops' queued webhooks). Raises
        StoreError, or any error of a server that refuses CONFIG."""
        if not self.cluster:
            policy = self.redis.config_get("maxmemory-policy").get("maxmemory-policy")
            return str(policy) if policy else None
        # One CONFIG GET a master (asked of all at once, redis-py unwraps a single answer).
        cluster: Any = self.redis
        replies = [
            cluster.config_get("maxmemory-policy", target_nodes=node)
            for node in cluster.get_primaries()
        ]
        policies = sorted(
            {str(r["maxmemory-policy"]) for r in replies if r.get("maxmemory-policy")}
        )
        evicting = [p for p in policies if p != "noeviction"]
        return evicting[0] if evicting else (policies[0] if policies else None)

    def close(self) -> None:
        """Close the client's connections."""
        self.redis.close()
