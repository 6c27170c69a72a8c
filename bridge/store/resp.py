"""The pipelined RESP client: plain commands packed and parsed by hiredis on a connection that
redis-py opened (see `RawPipeline`).

It reads the connected socket that redis-py keeps in `Connection._sock`, a private attribute:
pyproject.toml pins redis-py to the minor release this was tested against.
"""

from __future__ import annotations

import os
import select
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
import redis


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
            # MULTI its client left unfinished, and the drain deduplicates webhooks by id (two
            # copies of one claim, pushed back to back, are one webhook in one batch or in two
            # batches of one drain; see processor.py).
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
        return exec_results(self._pending.result())


def exec_results(replies: Sequence[Any]) -> list[Any]:
    """EXEC's replies from a MULTI's (MULTI, the queued commands' QUEUED, then EXEC's list);
    raises the first error, or WatchError for an aborted transaction."""
    _raise_first_error(replies[:-1])
    results = replies[-1]
    if isinstance(results, Exception):
        raise results
    if results is None:
        raise redis.exceptions.WatchError("transaction aborted")
    _raise_first_error(results)
    return list(results)


def _raise_first_error(replies: Sequence[Any]) -> None:
    """Raise the first reply that is an error. The kinds of reply a commit gets are looked
    at first, in C (`map(type, ...)`): a batch's MULTI has ~2 000 commands, so two replies
    each to test one by one (2000 orders: 0.022 s -> 0.004 s of cProfile)."""
    if any(issubclass(kind, Exception) for kind in set(map(type, replies))):
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
