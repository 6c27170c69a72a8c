"""The pipelined RESP client on a Redis Cluster: `RawPipeline`'s counterpart (`DATA_REDIS_URL`).

Every data key carries its shop as a hash tag (`cb:{shop}:...`, keys.py), so one shop's commands
all go to the master owning its slot. `ClusterRawPipeline` keeps one `RawPipeline` per master
(redis-py's `RedisCluster` opens the connections and keeps the slot map), sends each command to
its slot's master, and follows the cluster's redirections when it reads the replies:

- `MOVED` (the slot has a new owner): the slot map is read again and the command re-sent there.
  Redis did not run a command it answered with MOVED, so a re-send never runs one twice.
- `ASK` (the slot is being migrated and the key is already on the target): the command goes to
  the target once, preceded by ASKING.
- `TRYAGAIN` (a multi-key command whose keys are split by a migration under way): re-sent after
  a short wait.
- A connection error or a timeout (a master that died): the error is raised (the command may
  have run) and the slot map read again from the other nodes, on a thread of its own. A dead
  master never answers MOVED: without this, once its replica is promoted, every command of its
  slots would still go to it.

A MULTI (the drain's commit) is one slot's. When a migration under way has moved some of its
keys and not others, Redis refuses the commands of the missing keys with ASK: running the whole
transaction on the target would write there keys that still live on the source, so it is sent
again to the source after a short wait, until every key it names has moved (then all of it goes
to the target with ASKING) or the migration ended (MOVED). A transaction refused at queue time
is never run (EXECABORT), so sending it again runs it once.
"""

from __future__ import annotations

import binascii
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.connection import parse_url

from bridge.store.resp import Pending, RawPipeline, exec_results

SLOTS = 16384
# How long a command keeps being re-sent while the cluster redirects it (a migration of the slot
# under way, a failover): past that its redirection error is its reply.
REDIRECT_DEADLINE_S = 10.0
# The first wait before a command refused with TRYAGAIN (or a split MULTI) is sent again; each
# further wait doubles, up to RETRY_WAIT_MAX_S: a delivery's settlement carries its window's
# calls (up to megabytes), sent again at each try for as long as the slot migrates.
RETRY_WAIT_S = 0.02
RETRY_WAIT_MAX_S = 0.5


def retry_waits() -> Iterator[float]:
    """RETRY_WAIT_S, doubling at each wait up to RETRY_WAIT_MAX_S."""
    wait = RETRY_WAIT_S
    while True:
        yield wait
        wait = min(2 * wait, RETRY_WAIT_MAX_S)


# redis-py's tries of one command (its RedisClusterRequestTTL) while redirected: past the first
# half it waits 50 ms after each TRYAGAIN, so 400 is about 10 s.
REQUEST_TTL = 400

# Commands that name no key (sent with the transaction they belong to).
_KEYLESS = frozenset({"MULTI", "EXEC", "DISCARD", "ASKING", "PING"})


def key_slot(key: str | bytes) -> int:
    """The cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the first `{`
    and the next `}`, when not empty), else of the whole key, modulo 16384."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return binascii.crc_hqx(raw, 0) % SLOTS


def command_key(command: Sequence[Any]) -> str | bytes | None:
    """The key a command is routed by: its first (EVAL: its first KEYS entry); None if keyless."""
    name = command[0].upper() if isinstance(command[0], str) else command[0].decode().upper()
    if name in ("EVAL", "EVALSHA"):
        return command[3] if int(command[2]) > 0 else None
    if name in _KEYLESS or len(command) < 2:
        return None
    key: str | bytes = command[1]
    return key


def redirection(reply: Any) -> tuple[str, str] | None:
    """(kind, where) when `reply` is a cluster redirection: ("MOVED", "host:port"), ("ASK",
    "host:port"), ("TRYAGAIN", ""), ("CLUSTERDOWN", "")."""
    if not isinstance(reply, redis.ResponseError):
        return None
    text = str(reply)
    if text.startswith(("MOVED ", "ASK ")):
        kind, _slot, where = text.split(" ", 2)
        return kind, where
    if text.startswith(("TRYAGAIN", "CLUSTERDOWN")):
        return text.split(" ", 1)[0], ""
    return None


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster | ClusterOnFirstUse)


class ClusterRawPipeline:
    """`RawPipeline`'s interface (`send`, `pipeline`, `send_transaction`, `transaction`) over a
    Redis Cluster: one `RawPipeline` per master, commands routed by slot, redirections
    followed (module docstring)."""

    def __init__(self, client: RedisCluster[bytes]) -> None:
        # Any: redis-py's own types, not the stubs', describe NodesManager (private).
        self.client: Any = client
        self._pipes: dict[str, RawPipeline] = {}
        self._lock = threading.Lock()
        self._refreshed = 0.0
        # The pid of the process whose thread reads the slot map after a node failed (0: none).
        self._reloading = 0

    # --- the slot map -----------------------------------------------------------------------
    def node_name(self, slot: int) -> str:
        """The master owning `slot` ("host:port"), from the client's slot map."""
        return str(self.client.nodes_manager.get_node_from_slot(slot).name)

    def refresh(self) -> None:
        """Read the slot map again (after a MOVED): at most once per RETRY_WAIT_S, whoever
        asks."""
        with self._lock:
            if time.monotonic() - self._refreshed < RETRY_WAIT_S:
                return
            self.client.nodes_manager.initialize()  # ConnectionError if no node answers
            self._refreshed = time.monotonic()

    def node_failed(self, name: str) -> None:
        """A connection to the node `name` failed: read the slot map again, from the other nodes
        first (as redis-py does after a connection error), so that the next command goes to
        whichever node owns its slot by then (the replica promoted after a master died).

        On a thread of its own: the caller raises its error at once. Asking the nodes one after
        the other costs up to a timeout each when they hang (a partition, a stuck host): in the
        request, that was 2 s more per node before a webhook's 503 (and this lock held, and
        the other threads' MOVED waiting on it). One reading at a time, at most once per
        RETRY_WAIT_S; quiet if no node answers (the next failure tries again)."""
        with self._lock:
            # A reading under way in the process this one was forked from never ends here.
            busy = self._reloading == os.getpid()
            if busy or time.monotonic() - self._refreshed < RETRY_WAIT_S:
                return
            self._reloading = os.getpid()
        try:
            threading.Thread(
                target=self._reload, args=(name,), name="cluster-slot-map", daemon=True
            ).start()
        except BaseException:
            with self._lock:
                self._reloading = 0
            raise

    def _reload(self, failed: str) -> None:
        try:
            with contextlib.suppress(Exception):  # no node answers: the next failure tries again
                manager = self.client.nodes_manager
                with manager._lock:  # redis-py's own, over its node dicts other threads read
                    manager.move_node_to_end_of_cached_nodes(failed)
                manager.initialize(last_failed_node_name=failed)
        finally:
            with self._lock:
                self._refreshed = time.monotonic()
                self._reloading = 0

    @contextmanager
    def watching(self, name: str) -> Iterator[None]:
        """Read the slot map again (`node_failed`) if the node `name` fails in this block."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError):
            self.node_failed(name)
            raise

    def pipe(self, name: str) -> RawPipeline:
        """The `RawPipeline` of the node `name` ("host:port"), made on first use."""
        pipe = self._pipes.get(name)
        if pipe is None:
            with self._lock:
                pipe = self._pipes.get(name)
                if pipe is None:
                    node = self.client.get_node(node_name=name)
                    if node is None:  # named by a redirection before the map knew it
                        self.client.nodes_manager.initialize()
                        node = self.client.get_node(node_name=name)
                    if node is None or node.redis_connection is None:
                        raise redis.ConnectionError(f"no cluster node {name}")
                    pipe = RawPipeline(node.redis_connection)
                    self._pipes[name] = pipe
        return pipe

    def _route(self, command: Sequence[Any]) -> str:
        key = command_key(command)
        return self.node_name(key_slot(key) if key is not None else 0)

    # --- plain commands ---------------------------------------------------------------------
    def send(self, *commands: tuple[Any, ...]) -> ClusterPending:
        """Write `commands`, each to its slot's master (one write per master); their replies
        come with the returned `ClusterPending`."""
        groups: dict[str, list[int]] = {}
        for i, command in enumerate(commands):
            groups.setdefault(self._route(command), []).append(i)
        parts = []
        for name, indices in groups.items():
            with self.watching(name):
                parts.append((self.pipe(name).send(*(commands[i] for i in indices)), indices, name))
        return ClusterPending(self, commands, parts)

    def pipeline(self, *commands: tuple[Any, ...]) -> list[Any]:
        """`RawPipeline.pipeline` on the cluster."""
        return self.send(*commands).result()

    def resend(self, command: tuple[Any, ...], reply: Any) -> Any:
        """`command`'s reply, following the redirection `reply` until it is not one (or
        REDIRECT_DEADLINE_S passed)."""
        deadline = time.monotonic() + REDIRECT_DEADLINE_S
        waits = retry_waits()
        where = redirection(reply)
        while where is not None and time.monotonic() < deadline:
            kind, node = where
            if kind == "ASK":
                with self.watching(node):
                    reply = self.pipe(node).pipeline(("ASKING",), command)[1]
            else:
                if kind == "MOVED":
                    self.refresh()
                else:
                    time.sleep(next(waits))
                node = self._route(command)
                with self.watching(node):
                    reply = self.pipe(node).pipeline(command)[0]
            where = redirection(reply)
        return reply

    # --- transactions -----------------------------------------------------------------------
    def send_transaction(self, commands: Sequence[tuple[Any, ...]]) -> ClusterTransaction:
        """MULTI, `commands`, EXEC in one write to the master of their (one) slot."""
        name = self._route(commands[0]) if commands else self.node_name(0)
        batch = (("MULTI",), *commands, ("EXEC",))
        with self.watching(name):
            return ClusterTransaction(self, commands, self.pipe(name).send(*batch), name)

    def transaction(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        return self.send_transaction(commands).result()


class ClusterPending:
    """Plain commands sent to their masters; `result` gives every reply in the order sent, a
    redirection followed (`ClusterRawPipeline.resend`)."""

    __slots__ = ("_commands", "_owner", "_parts", "_replies")

    def __init__(
        self,
        owner: ClusterRawPipeline,
        commands: Sequence[tuple[Any, ...]],
        parts: list[tuple[Pending, list[int], str]],
    ) -> None:
        self._owner = owner
        self._commands = commands
        self._parts = parts
        self._replies: list[Any] | None = None

    def result(self) -> list[Any]:
        if self._replies is None:
            replies: list[Any] = [None] * len(self._commands)
            for pending, indices, name in self._parts:
                with self._owner.watching(name):
                    results = pending.result()
                for i, reply in zip(indices, results, strict=True):
                    replies[i] = reply
            for i, reply in enumerate(replies):
                if redirection(reply) is not None:
                    replies[i] = self._owner.resend(self._commands[i], reply)
            self._replies = replies
        return self._replies


class ClusterTransaction:
    """A MULTI/EXEC sent to its slot's master; `result` gives EXEC's replies (re-sending the
    transaction while the cluster redirects it: module docstring) or raises the first error."""

    __slots__ = ("_commands", "_name", "_owner", "_pending")

    def __init__(
        self,
        owner: ClusterRawPipeline,
        commands: Sequence[tuple[Any, ...]],
        pending: Pending,
        name: str,
    ) -> None:
        self._owner = owner
        self._commands = commands
        self._pending = pending
        self._name = name

    def result(self) -> list[Any]:
        owner = self._owner
        with owner.watching(self._name):
            replies = self._pending.result()
        deadline = time.monotonic() + REDIRECT_DEADLINE_S
        waits = retry_waits()
        batch = (("MULTI",), *self._commands, ("EXEC",))
        while time.monotonic() < deadline:
            # MULTI's reply, each command's (QUEUED or a refusal), EXEC's.
            kinds = [redirection(r) for r in replies[1:]]
            if not any(kinds):
                break
            queued = kinds[:-1]
            if any(k is not None and k[0] == "MOVED" for k in kinds):
                owner.refresh()
                node = owner._route(self._commands[0])
                with owner.watching(node):
                    replies = owner.pipe(node).pipeline(*batch)
            elif queued and all(k is not None and k[0] == "ASK" for k in queued):
                # Every key it names is on the migration's target already.
                target = next(k[1] for k in queued if k is not None)
                with owner.watching(target):
                    replies = owner.pipe(target).pipeline(("ASKING",), *batch)[1:]
            else:  # some keys moved, some not yet (or TRYAGAIN): wait for the migration
                time.sleep(next(waits))
                node = owner._route(self._commands[0])
                with owner.watching(node):
                    replies = owner.pipe(node).pipeline(*batch)
        return exec_results(replies)


def client_options(url: str, *, tls_verify: bool, timeout_s: float) -> dict[str, Any]:
    """redis-py's options for the bridge's clients, plain or cluster: `rediss://` accepts
    Heroku's self-signed certificate unless told to verify it."""
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": 30,
        "retry_on_timeout": False,
    }
    if url.startswith("rediss://") and not tls_verify:
        options["ssl_cert_reqs"] = "none"
    return options


def _unreachable_is_a_connection_error(client: RedisCluster[bytes]) -> None:
    """Make the slot map's reload raise ConnectionError when no node answers.

    redis-py reloads the slot map after a connection error, and raises RedisClusterException
    (not a RedisError) when no node of the cluster answers: past the store, which promises
    StoreError (RedisError) for any failure to reach Redis, that would be a crash of the web's
    request (500, not 503) or of a worker's loop. Every RedisClusterException about
    reachability comes from that one method (`NodesManager.initialize`), so it alone is wrapped,
    on this client's own manager."""
    manager: Any = client.nodes_manager
    initialize = manager.initialize

    def initialize_or_connection_error(*args: Any, **kwargs: Any) -> Any:
        try:
            return initialize(*args, **kwargs)
        except redis.exceptions.RedisClusterException as exc:
            raise redis.ConnectionError(f"no Redis Cluster node answers: {exc}") from exc

    manager.initialize = initialize_or_connection_error


class ClusterOnFirstUse:
    """A `RedisCluster` client built when it is first used, not when the process starts.

    redis-py's cluster client reads the slot map as it is built, and cannot be built while no
    node answers. A web process started during a cluster outage must still start and answer 503
    (as with a plain Redis that is down), not fail to boot: gunicorn then stops altogether, and
    a platform backs off restarting it for minutes after the outage ended. Until a build
    succeeds every use raises ConnectionError (a RedisError: the store's StoreError), and each
    use tries again. Scripts are registered without a client (a script object only needs its
    SHA until it runs)."""

    def __init__(self, build: Callable[[], RedisCluster[bytes]]) -> None:
        self._build = build
        self._client: RedisCluster[bytes] | None = None
        self._lock = threading.Lock()

    def client(self) -> RedisCluster[bytes]:
        """The cluster's client: built now if it is not yet (ConnectionError if no node
        answers)."""
        client = self._client
        if client is None:
            with self._lock:
                client = self._client
                if client is None:
                    client = self._client = self._build()
        return client

    def register_script(self, script: str) -> Script:
        # `Script` computes its SHA from bytes without asking the client for its encoder.
        return Script(cast("RedisCluster[bytes]", self), script.encode())

    def close(self) -> None:
        """Close the client's connections; a client never built has none (and building it only
        to close it would fail while no node answers)."""
        if self._client is not None:
            self._client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client(), name)


def connect_cluster(
    url: str, *, tls_verify: bool = False, timeout_s: float = 5.0
) -> RedisCluster[bytes]:
    """A client for a Redis Cluster, given any node's URL (DATA_REDIS_URL): built now when a
    node answers, else on first use (`ClusterOnFirstUse`: typed as the client it stands for).
    Built now, its slot map names every node: gunicorn's master builds it before forking, so a
    worker forked later (respawned, or idle until then) still knows the other nodes when the
    URL's node is the one that died."""
    lazy = ClusterOnFirstUse(
        lambda: _build_cluster(url, tls_verify=tls_verify, timeout_s=timeout_s)
    )
    with contextlib.suppress(redis.RedisError):  # else built on first use
        lazy.client()
    return cast("RedisCluster[bytes]", lazy)


def node_urls(value: str) -> list[str]:
    """The nodes DATA_REDIS_URL names: one URL, or several separated by commas (the first one's
    scheme, password and options apply to all), so that a process can start while any one of
    them is down."""
    return [part.strip() for part in value.split(",") if part.strip()]


def _build_cluster(url: str, *, tls_verify: bool, timeout_s: float) -> RedisCluster[bytes]:
    first, *others = node_urls(url)
    seeds = [ClusterNode(o["host"], o.get("port", 6379)) for o in map(parse_url, others)]
    try:
        client: RedisCluster[bytes] = RedisCluster.from_url(
            first,
            startup_nodes=seeds,
            **client_options(first, tls_verify=tls_verify, timeout_s=timeout_s),
        )
    except redis.exceptions.RedisClusterException as exc:  # no node answers at start
        raise redis.ConnectionError(f"no Redis Cluster node answers: {exc}") from exc
    _unreachable_is_a_connection_error(client)
    # A command naming several keys of a slot being migrated, some moved and some not (an MGET,
    # a DEL), is refused with TRYAGAIN until they are together: redis-py tries 16 times (under a
    # second); this waits about as long as `ClusterRawPipeline` does (REDIRECT_DEADLINE_S).
    setattr(client, "RedisClusterRequestTTL", REQUEST_TTL)  # noqa: B010 (a class variable)
    return client
