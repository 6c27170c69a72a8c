"""Redis: the inbound queue, the outbox, leases and the bridge's counters.

Every key is scoped by shop (`cb:{shop}:...`; the braces are a cluster hash tag), so one shop's
work never mixes with another's and a batch can never carry two write keys.

Queues are at-least-once: a consumer moves items from a list into its shop's `work` list in one
script and removes them in the same MULTI that writes what they produced, so a crash at any
instant means a redo (same messageIds), never a loss.
"""

from __future__ import annotations

import functools
import os
import select
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import hiredis
import redis

from bridge.delivery import deadletters
from bridge.store.wire import Envelope

INGEST_DUPLICATE = 0
INGEST_QUEUED = 1
INGEST_QUEUED_WAKE = 2  # queued, and no drain job is known to be pending: enqueue one

# A pending-job flag older than this is presumed lost (its enqueue failed, or its worker was
# killed); the next webhook or the worker's ticker re-enqueues it.
FLAG_STALE_MS = 15_000

SHOPS_KEY = "cb:shops"
# Counters of rejections naming shops the bridge does not know go here (bounded field names);
# /metrics exports them under the shop label "other".
REJECTED_KEY = "cb:rejected"
SHOP_REGISTER_EVERY_MS = 60_000


class Keys:
    """All key names for one shop."""

    def __init__(self, shop: str) -> None:
        p = f"cb:{{{shop}}}:"
        self.prefix = p
        self.inbound = p + "in"
        self.inbound_work = p + "in:work"
        self.drain_flag = p + "in:flag"
        self.drain_lease = p + "in:lease"
        # Drains that found the work list left by one that did not finish (a crash, a timeout)
        # and the batch size last tried on it: a poison batch is split until its culprit is
        # alone, then parked (drain.py).
        self.drain_tries = p + "in:tries"
        self.outbox = p + "out"
        self.outbox_work = p + "out:work"
        self.deliver_flag = p + "out:flag"
        self.deliver_lease = p + "out:lease"
        self.stats = p + "stats"
        self.parked = p + "parked"  # legacy list; dead letters live in `dlq` (deadletters.py)
        # Delivery (issue 4): people whose calls wait for a retry, and the shop's pause.
        self.out_due = p + "out:due"  # zset person hash -> when its held calls go again (ms)
        self.out_meta = p + "out:meta"  # hash person hash -> retry state (attempts, first error)
        self.out_held = p + "out:held:"  # + person hash: that person's calls, in order
        self.paused = p + "paused"  # pause time (ms) while Pipelines refuses the write key
        self.paused_key = p + "paused:key"  # fingerprint of the write key that was refused
        self.paused_probe = p + "paused:probe"  # set while a probe is not yet due
        # A lease held by an erasure of the shop's data (compliance.py), from before it waits for
        # the delivery lease until it is done: the deliverer stands aside when it sees it.
        self.erasing = p + "out:erasing"
        # Compliance requests (issue 7) committed with their batch, run after it, then removed.
        self.compliance = p + "compliance"

    def seen(self, webhook_id: str) -> str:
        return f"{self.prefix}seen:{webhook_id}"

    def state(self, name: str) -> str:
        return f"{self.prefix}st:{name}"


@functools.lru_cache(maxsize=4096)
def shop_keys(shop: str) -> Keys:
    """`Keys(shop)`, built once per shop: the request path needs them for every webhook."""
    return Keys(shop)


# For producers that want to know about duplicates up front (backfill, reconcile): skip a
# webhook whose id the drain already processed. Seen-markers are written only by the drain's
# commit (processor.py), so a refused or lost write never marks anything as seen.
_INGEST = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[4], ARGV[4] .. ':duplicate', 1)
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[4], ARGV[4] .. ':accepted', 1)
if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then
  redis.call('SADD', KEYS[5], ARGV[5])
  return 2
end
return 1
"""

# The delivery window: resume an unfinished one (a crashed deliverer's), else release the people
# whose retry is due (their held calls, in order) and take new entries up to the byte and count
# limits. A new entry of a person who still waits for a retry joins that person's held list, so
# per-person order holds while other people go on. People are named by the keyed hash in the
# entry's header (the header is `wire.OutboxHeader`, the Python side of the naming
# `wire.hold_name`); an entry queued before headers carried one gets the unkeyed name it had
# then. Returns {window, outbox length left}.
_TAKE_OUTBOX = """
local w = redis.call('LRANGE', KEYS[2], 0, -1)
if #w > 0 then return {w, redis.call('LLEN', KEYS[1])} end
local maxb, maxn, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local prefix = ARGV[4]
local total, n = 0, 0
local released = {}
local function push(key, items)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', key, unpack(items, i, math.min(i + 999, #items)))
  end
end
for _, h in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)) do
  local items = redis.call('LRANGE', prefix .. h, 0, -1)
  push(KEYS[2], items)
  n = n + #items
  for _, v in ipairs(items) do total = total + #v + 1 end
  redis.call('DEL', prefix .. h)
  redis.call('ZREM', KEYS[3], h)
  released[h] = true
end
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[5]) - 1)
local taken, towork = 0, {}
for i, v in ipairs(items) do
  if n >= maxn or (n > 0 and total + #v + 1 > maxb) then break end
  local nl = string.find(v, string.char(10), 1, true)
  local p, h = '', nil
  if nl then
    local ok, head = pcall(cjson.decode, string.sub(v, 1, nl - 1))
    if ok and type(head) == 'table' then
      if type(head.h) == 'string' and head.h ~= '' then h = head.h end
      if type(head.p) == 'string' then p = head.p end
    end
  end
  h = h or string.sub(redis.sha1hex(p), 1, 16)
  if (not released[h]) and redis.call('ZSCORE', KEYS[3], h) then
    redis.call('RPUSH', prefix .. h, v)
  else
    towork[#towork + 1] = v
    n = n + 1
    total = total + #v + 1
  end
  taken = i
end
if taken > 0 then redis.call('LTRIM', KEYS[1], taken, -1) end
push(KEYS[2], towork)
return {redis.call('LRANGE', KEYS[2], 0, -1), redis.call('LLEN', KEYS[1])}
"""

# Clear the pending flag only when nothing is left; otherwise the caller re-enqueues itself.
# Pending flags expire (FLAG_STALE_MS): one whose job was lost stops blocking new wake-ups.
_FINISH = """
if redis.call('LLEN', KEYS[1]) == 0 and redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[3])
  return 0
end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
return 1
"""

# A drain starts: if the work list holds a batch a drain before it took and did not commit, one
# more try on it is counted (and the size last tried returned); else the count is cleared.
_BEGIN = """
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
  return {0, 0}
end
local n = redis.call('HINCRBY', KEYS[2], 'n', 1)
redis.call('EXPIRE', KEYS[2], 604800)
return {n, tonumber(redis.call('HGET', KEYS[2], 'size') or '0')}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


# A rejection before the shop is trusted is counted in the shop's own stats when the shop is
# configured or has had a signed webhook accepted (a member of SHOPS_KEY: a bounded set), else in
# REJECTED_KEY. So a botched secret rotation shows per shop in /metrics, while unsigned requests
# naming made-up shops cannot create a stats hash (or a metrics series) per made-up shop.
_COUNT_REJECTED = """
if ARGV[3] == '1' or redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
return redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
"""


# Any failure talking to Redis (connection, timeout, a refused command), as the bridge names it:
# parts outside the store catch this, never a redis-py class.
StoreError = redis.RedisError


def connect(url: str, *, tls_verify: bool = False, timeout_s: float = 5.0) -> redis.Redis[bytes]:
    """A client for REDIS_URL; `rediss://` accepts Heroku's self-signed certificate by default."""
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": 30,
        "retry_on_timeout": False,
    }
    if url.startswith("rediss://") and not tls_verify:
        kwargs["ssl_cert_reqs"] = "none"
    return redis.Redis.from_url(url, **kwargs)


def now_ms() -> int:
    return int(time.time() * 1000)


class LeaseLost(Exception):
    """Another worker holds the lease now: this one must not write its results."""


@dataclass
class Settlement:
    """What one delivery round writes, in one MULTI guarded by the delivery lease.

    `remaining` becomes the new in-flight window (calls neither settled nor held: paused, or
    stopping); `held` appends each waiting person's calls to their hold list with a due time and
    retry state; `clear` forgets the retry state of people whose calls went through.
    """

    remaining: list[bytes] = field(default_factory=list)
    held: list[tuple[str, list[bytes], int, bytes]] = field(default_factory=list)
    clear: set[str] = field(default_factory=set)
    letters: list[deadletters.DeadLetter] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

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
    parked: list[bytes] = field(default_factory=list)  # encoded deadletters.DeadLetter records
    # issue 6: per-event volume buckets and last-seen times (bridge/volume.record)
    hash_incr: dict[tuple[str, str], int] = field(default_factory=dict)  # (key, field) -> n
    hash_set: dict[tuple[str, str], int] = field(default_factory=dict)  # (key, field) -> value
    compliance: list[bytes] = field(default_factory=list)  # encoded ComplianceRequests (issue 7)
    seen: list[str] = field(default_factory=list)  # seen-markers of the batch's webhooks
    seen_ttl_s: int = 72 * 3600
    retried: bool = False  # the batch ends a run of failed tries: clear their count

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


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


class Accepted(NamedTuple):
    """What queueing one webhook found: its id already processed, and whether to wake a drain."""

    seen_before: bool
    wake: bool


class Pending:
    """The replies of commands already written, read when asked for (`result`)."""

    __slots__ = ("_error", "_n", "_pipe", "_replies")

    def __init__(self, pipe: RawPipeline, n: int) -> None:
        self._pipe = pipe
        self._n = n
        self._replies: list[Any] | None = None
        self._error: BaseException | None = None

    def result(self) -> list[Any]:
        """Every reply, a command's error reply as its exception; raises a connection error."""
        if self._replies is None and self._error is None:
            self._pipe._complete(self)
        if self._error is not None:
            raise self._error
        assert self._replies is not None
        return self._replies


class RawPipeline:
    """Pipelined plain commands on a connection of the client's own pool, without redis-py's
    per-command machinery: the request path's one round trip, and the drain's take and commit.

    redis-py 8 spends ~55 us of Python on each command it sends (argument filtering,
    observability hooks, a pool checkout and return) and ~4 us on each reply it reads: as much
    as the round trip itself on loopback. Here commands are packed by hiredis, written in one
    `sendall` and their replies parsed by a hiredis reader fed straight from the socket.
    redis-py still opens the connection (TLS, AUTH, SELECT, timeouts), so this works wherever
    the client does. Each thread keeps one connection (gunicorn forks after `preload_app`, so a
    connection is only ever used by the process that opened it).

    `send` writes without waiting: the drain has Redis run one batch's commit and move the
    next batch while it maps. Replies are read in the order the commands were sent, whoever
    asks first, so a later round trip on the thread never reads an earlier one's replies.
    """

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self.pool = client.connection_pool
        self._local = threading.local()

    def _link(self) -> tuple[Any, hiredis.Reader]:
        """This thread's connected (socket, reader)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.conn = self.pool.make_connection()
            local.pid = os.getpid()
            local.sock = None
            local.pending = deque()
        if local.sock is None:
            local.conn.connect()
            # redis-py keeps the connected socket in `_sock`; the reader is ours, so a reply is
            # never split between two parsers.
            local.sock = local.conn._sock
            local.reader = hiredis.Reader(replyError=redis.ResponseError)
            local.idle = select.poll()
            local.idle.register(local.sock, select.POLLIN)
        elif not local.pending and local.idle.poll(0):
            # Readable while no reply is owed: Redis closed it (a restart, an idle timeout).
            # A write would still "succeed" into it, so reconnect before writing, not after.
            self._drop()
            return self._link()
        return local.sock, local.reader

    def _drop(self) -> None:
        local = self._local
        for waiting in local.pending:
            waiting._error = redis.ConnectionError("connection to Redis lost before the reply")
        local.pending.clear()
        local.sock = None
        local.conn.disconnect()

    def send(self, *commands: tuple[Any, ...]) -> Pending:
        """Write `commands` in one write; their replies come with the returned `Pending`."""
        packed = b"".join([hiredis.pack_command(c) for c in commands])
        try:
            sock = self._link()[0]
            sock.sendall(packed)
        except (OSError, redis.ConnectionError):
            # An idle connection dropped (a Redis restart, a proxy timeout): one retry on a
            # fresh connection. Safe even if part of the first write landed: Redis discards a
            # MULTI its client left unfinished, and the drain deduplicates webhooks by id.
            # Replies still owed on the old connection are lost: their `result` raises.
            self._drop()
            sock = self._link()[0]
            try:
                sock.sendall(packed)
            except TimeoutError as exc:
                self._drop()
                raise redis.TimeoutError("timeout writing to Redis") from exc
            except OSError as exc:
                self._drop()
                raise redis.ConnectionError(f"error writing to Redis: {exc}") from exc
        pending = Pending(self, len(commands))
        self._local.pending.append(pending)
        return pending

    def pipeline(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send `commands` in one write, read every reply: a command's error reply comes back
        as its exception (the others still ran); a connection error raises."""
        return self.send(*commands).result()

    def _complete(self, target: Pending) -> None:
        """Read replies, oldest first, until `target` has its own."""
        local = self._local
        while target._replies is None and target._error is None:
            first = local.pending[0]
            try:
                first._replies = self._read(local.sock, local.reader, first._n)
            except BaseException:
                self._drop()  # replies may be left unread on the socket: never reuse it
                raise
            local.pending.popleft()

    @staticmethod
    def _read(sock: Any, reader: hiredis.Reader, n: int) -> list[Any]:
        replies: list[Any] = []
        while len(replies) < n:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                raise redis.ConnectionError(f"unreadable reply from Redis: {exc}") from exc
            if reply is False:
                try:
                    data = sock.recv(65536)
                except TimeoutError as exc:
                    raise redis.TimeoutError("timeout reading from Redis") from exc
                except OSError as exc:
                    raise redis.ConnectionError(f"error reading from Redis: {exc}") from exc
                if not data:
                    raise redis.ConnectionError("connection closed by Redis")
                reader.feed(data)
            else:
                replies.append(reply)
        return replies

    def send_transaction(self, commands: Sequence[tuple[Any, ...]]) -> PendingTransaction:
        """MULTI, `commands`, EXEC in one write, without waiting for the outcome."""
        return PendingTransaction(self.send(("MULTI",), *commands, ("EXEC",)))

    def transaction(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """MULTI, `commands`, EXEC in one write; the replies of EXEC. Raises the first error
        (a command refused when queued aborts the whole transaction, as MULTI does)."""
        return self.send_transaction(commands).result()


class PendingTransaction:
    """A MULTI/EXEC sent; `result` gives EXEC's replies or raises the first error."""

    __slots__ = ("_pending",)

    def __init__(self, pending: Pending) -> None:
        self._pending = pending

    def result(self) -> list[Any]:
        replies = self._pending.result()
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        results = replies[-1]
        if results is None:
            raise redis.exceptions.WatchError("transaction aborted")
        for result in results:
            if isinstance(result, Exception):
                raise result
        return list(results)


def _moves(k: Keys, n: int) -> list[tuple[Any, ...]]:
    return [("LMOVE", k.inbound, k.inbound_work, "LEFT", "RIGHT")] * n


def _checked(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply


def _moved(replies: list[Any]) -> list[bytes]:
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
    """LMOVEs sent; `result` gives the webhooks they moved (raises a Redis error)."""

    __slots__ = ("_pending",)

    def __init__(self, pending: Pending) -> None:
        self._pending = pending

    def result(self) -> list[bytes]:
        return _moved(self._pending.result())


class PendingCommit:
    """A drain commit sent; `result` raises if it failed, else tells whether it set the
    delivery flag (see `Store.commit_drain`)."""

    __slots__ = ("_pending", "_wakes")

    def __init__(self, pending: PendingTransaction, *, wakes: bool) -> None:
        self._pending = pending
        self._wakes = wakes

    def result(self) -> bool:
        replies = self._pending.result()
        return self._wakes and replies[-1] is not None


def _ingest_arguments(env: Envelope) -> dict[str, list[Any]]:
    """The _INGEST script's keys and arguments for one webhook."""
    k = Keys(env.shop)
    return {
        "keys": [k.seen(env.webhook_id), k.inbound, k.drain_flag, k.stats, SHOPS_KEY],
        "args": [
            env.encode(),
            env.received_ms or now_ms(),
            FLAG_STALE_MS,
            "webhooks:" + env.topic,
            env.shop,
        ],
    }


class Store:
    """Queue and counter operations over one Redis client. Raises redis errors as they come."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self.redis = client
        self._ingest = client.register_script(_INGEST)
        self._raw = RawPipeline(client)
        self._registered: dict[str, int] = {}  # shop -> when this process last wrote SHOPS_KEY
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._take_outbox = client.register_script(_TAKE_OUTBOX)
        self._count_rejected = client.register_script(_COUNT_REJECTED)

    # --- request path -------------------------------------------------------------------
    def accept(self, env: Envelope) -> Accepted:
        """Queue a verified webhook: one round trip of plain commands (see RawPipeline)."""
        k = shop_keys(env.shop)
        at = env.received_ms or now_ms()
        commands: list[tuple[Any, ...]] = [
            ("RPUSH", k.inbound, env.encode()),
            ("EXISTS", k.seen(env.webhook_id)),
            ("HINCRBY", k.stats, f"webhooks:{env.topic}:accepted", 1),
            ("SET", k.drain_flag, at, "NX", "PX", FLAG_STALE_MS),
        ]
        # The shop set (the worker's ticker walks it) is written by each process once a
        # minute per shop rather than once a webhook; it is re-written after a Redis restart.
        registered = self._registered.get(env.shop, 0)
        if at - registered > SHOP_REGISTER_EVERY_MS or at < registered:
            commands.append(("SADD", SHOPS_KEY, env.shop))
        pushed, seen, _count, flag, *registering = self._raw.pipeline(*commands)
        if isinstance(pushed, Exception):
            raise pushed  # not queued (out of memory, a read-only replica...): the caller 503s
        if registering and not isinstance(registering[0], Exception):
            self._registered[env.shop] = at
        woke = flag is not None and not isinstance(flag, Exception)
        return Accepted(seen_before=seen == 1, wake=woke)

    def ingest(self, env: Envelope) -> int:
        """Queue a webhook unless the drain already processed its id. Returns an INGEST_* code.

        For backfill and reconcile, which report duplicates; the web uses `accept`."""
        return int(self._ingest(**_ingest_arguments(env)))

    def ingest_many(self, envs: list[Envelope]) -> list[int]:
        """`ingest` for many webhooks in one round trip (the backfill's batches)."""
        pipe = self.redis.pipeline(transaction=False)
        for env in envs:
            self._ingest(**_ingest_arguments(env), client=pipe)
        return [int(r) for r in pipe.execute()]

    def count(self, shop: str, name: str, n: int = 1) -> None:
        self.redis.hincrby(Keys(shop).stats, name, n)

    def count_untrusted(self, shop: str, name: str, *, configured: bool) -> None:
        """Count a rejection of a request not (yet) trusted: in the shop's stats when the shop
        is configured or known (SHOPS_KEY), else in REJECTED_KEY (see _COUNT_REJECTED)."""
        self._count_rejected(
            keys=[SHOPS_KEY, Keys(shop).stats, REJECTED_KEY],
            args=[shop, name, "1" if configured else "0"],
        )

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

        Plain LMOVEs rather than a script: a script copies each 2-20 KB body into Lua and out
        again. Each LMOVE is atomic and the drain lease means one mover per shop, so a crash
        between two of them leaves every webhook in exactly one of the two lists."""
        k = Keys(shop)
        resumed, *moved = self._raw.pipeline(("LRANGE", k.inbound_work, 0, -1), *_moves(k, n))
        return [*_checked(resumed), *_moved(moved)]

    def begin_drain(self, shop: str, n: int) -> Begun:
        """`take_inbound`, also counting a try on a work list a drain before left unfinished
        (`Begun`); one round trip. The script touches no body: it counts and reads one hash."""
        k = Keys(shop)
        tries, resumed, *moved = self._raw.pipeline(
            ("EVAL", _BEGIN, 2, k.inbound_work, k.drain_tries),
            ("LRANGE", k.inbound_work, 0, -1),
            *_moves(k, n),
        )
        count, size = _checked(tries)
        return Begun(_checked(resumed), _moved(moved), int(count), int(size))

    def set_try_size(self, shop: str, size: int) -> None:
        """Record the batch size a drain is about to try on an unfinished work list."""
        self.redis.hset(Keys(shop).drain_tries, "size", size)

    def send_take(self, shop: str, n: int) -> PendingTake:
        """Move up to `n` more webhooks to the end of the work list, without waiting: the
        drain's next batch, taken while it processes the one before (see `send_commit`)."""
        return PendingTake(self._raw.send(*_moves(Keys(shop), n)))

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
        return self.send_commit(shop, commit, taken).result()

    def send_commit(self, shop: str, commit: Commit, taken: int | None = None) -> PendingCommit:
        """`commit_drain` without waiting for the outcome: `result()` raises if it failed.

        One MULTI of a few thousand commands per batch: packed directly (RawPipeline), since
        redis-py's pipeline spends ~10 us of Python on each command. With `taken`, only the
        batch's own entries leave the work list: the next batch, already moved behind them,
        stays there until its own commit."""
        k = Keys(shop)
        cmds = CommandList()
        for key, (value, ttl) in commit.state_set.items():
            cmds.add("SET", key, value, "EX", ttl)
        for key in commit.seen:
            cmds.add("SET", key, 1, "EX", commit.seen_ttl_s)
        if commit.state_del:
            cmds.add("DEL", *commit.state_del)
        if commit.calls:
            cmds.add("RPUSH", k.outbox, *commit.calls)
        if commit.parked:
            deadletters.stage(cmds, shop, commit.parked, now_ms())
        if commit.compliance:
            cmds.add("RPUSH", k.compliance, *commit.compliance)
        for name, n in commit.counters.items():
            cmds.add("HINCRBY", k.stats, name, n)
        for (key, name), n in commit.hash_incr.items():
            cmds.add("HINCRBY", key, name, n)
        for (key, name), v in commit.hash_set.items():
            cmds.add("HSET", key, name, v)
        if commit.retried:
            cmds.add("DEL", k.drain_tries)
        if taken is None:
            cmds.add("DEL", k.inbound_work)
        else:
            cmds.add("LTRIM", k.inbound_work, taken, -1)
        if commit.calls:
            cmds.add("SET", k.deliver_flag, now_ms(), "NX", "PX", FLAG_STALE_MS)
        return PendingCommit(self._raw.send_transaction(cmds.commands), wakes=bool(commit.calls))

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

    def settle_outbox(self, shop: str, lease_token: str, s: Settlement) -> None:
        """Write a round's outcome atomically, unless the lease changed hands (LeaseLost)."""
        k = Keys(shop)
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(k.deliver_lease)
                holder: Any = pipe.get(k.deliver_lease)  # immediate while watching
                if holder != lease_token.encode():
                    raise LeaseLost(shop)
                pipe.multi()
                pipe.delete(k.outbox_work)
                for i in range(0, len(s.remaining), 1000):
                    pipe.rpush(k.outbox_work, *s.remaining[i : i + 1000])
                for h, entries, due, meta in s.held:
                    for i in range(0, len(entries), 1000):
                        pipe.rpush(k.out_held + h, *entries[i : i + 1000])
                    pipe.zadd(k.out_due, {h: due})
                    pipe.hset(k.out_meta, h, meta)
                if s.clear:
                    pipe.hdel(k.out_meta, *s.clear)
                deadletters.stage(pipe, shop, s.letters, now_ms())
                for name, n in s.counters.items():
                    pipe.hincrby(k.stats, name, n)
                pipe.execute()
            except redis.WatchError:
                raise LeaseLost(shop) from None

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

    def finish_deliver(self, shop: str) -> bool:
        k = Keys(shop)
        return bool(
            self._finish(
                keys=[k.outbox, k.outbox_work, k.deliver_flag], args=[now_ms(), FLAG_STALE_MS]
            )
        )

    # --- state ----------------------------------------------------------------------------
    def load_state(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """One round trip for every state record a batch needs."""
        names = list(dict.fromkeys(keys))
        if not names:
            return {}
        values = self.redis.mget(names)
        return dict(zip(names, values, strict=True))

    def stats(self, shop: str) -> dict[str, int]:
        raw = self.redis.hgetall(Keys(shop).stats)
        return {k.decode(): int(v) for k, v in raw.items()}

    def shops(self) -> list[str]:
        return sorted(s.decode() for s in self.redis.smembers(SHOPS_KEY))

    def depth(self, shop: str) -> dict[str, int]:
        k = Keys(shop)
        pipe = self.redis.pipeline(transaction=False)
        for key in (k.inbound, k.inbound_work, k.outbox, k.outbox_work):
            pipe.llen(key)
        pipe.hlen(deadletters.dlq_key(shop))
        pipe.zcard(k.out_due)
        inbound, inwork, out, outwork, dead, waiting = pipe.execute()
        return {
            "inbound": inbound + inwork,
            "outbox": out + outwork,
            "parked": dead,  # kept for readers of the old name: same as dead_letters
            "dead_letters": dead,
            "waiting_people": waiting,
        }
