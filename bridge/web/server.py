"""The gunicorn worker class of `web`: each request is read whole by the event loop, then served.

Gunicorn's sync worker reads a request's headers and body on the worker itself, blocking: one
client that announces 1 000 bytes and sends 9 holds the worker until gunicorn kills it (30 s),
and as many such clients as there are workers stop the web (Shopify gives up after 5 s). The
gthread worker waits for a connection's first bytes in its event loop, but then reads the rest
of the request on a thread, blocking too.

BufferedWorker is gunicorn's gthread worker with one change: its event loop reads every request
without blocking into a buffer of the connection's own, the headers and then the body
(Content-Length or chunked), and only a complete request is served, whose parser reads that
buffer and never the network: by the loop itself with GUNICORN_THREADS=1 (the default), else
by a thread of the pool. A connection that has not sent its whole request within
WEB_REQUEST_DEADLINE_S (of being accepted, or of the first byte of its next request) is answered
408 and closed. A trickling client costs a socket and a few `recv` calls, never a thread.

The answer is written the same way: the app writes it into a buffer (Answer), and the event
loop sends that without blocking, under one WEB_REQUEST_DEADLINE_S for the whole answer, past
which the connection is closed. Nothing is read from a connection, and no request it pipelined
is served, while its answer is unsent; reading stops once a whole request is buffered, so a
connection never holds more than one request and one read (RECV_BYTES) beyond it. A client that
does not read its answers costs a socket and its buffered bytes, never the loop's time.

What all connections hold is capped (WEB_BUFFER_BYTES): the connection whose bytes would pass
the cap is answered 503 and closed. At gunicorn's worker_connections the worker keeps accepting,
closing the connection that has waited longest without a complete request to make room.

Whatever the loop cannot frame is handed over as it is, the stream ending there, and the
connection is closed after the answer: a header block over MAX_HEAD_BYTES, conflicting or
unreadable lengths, a body announced over MAX_BODY_BYTES (the app answers 413 without reading
it). Gunicorn's own parser then gives the answer it always gives (400, 431, ...) without
waiting for more bytes.

Written by hand, and measured (BENCHMARKS.md, "Slow clients"): gunicorn has no per-request
read deadline (its `timeout` is a worker heartbeat), and the async workers (gevent, eventlet)
would add a dependency and monkey-patch every socket of the process, Redis clients included.
It overrides internals of gunicorn's ThreadWorker (accept, on_client_socket_readable,
enqueue_req, handle, finish_request, murder_pending, _keepalive_after, TConn), so gunicorn is
pinned to one major version in pyproject.toml, and tests/integration/test_slow_clients.py runs
it in real gunicorn.
Plain HTTP/1.x only: TLS ends at the router in front of the web.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import selectors
import socket
import time
from concurrent import futures
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from bridge.config.settings import load_settings

# A header block larger than this is handed to gunicorn's parser, whose limits answer it
# (limit_request_line, limit_request_fields, limit_request_field_size).
MAX_HEAD_BYTES = 64 * 1024
RECV_BYTES = 256 * 1024
_HEX = frozenset(b"0123456789abcdefABCDEF")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TIMEOUT_BODY = b'{"error":"request timeout"}'
_BUSY_BODY = b'{"error":"busy"}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class Framing:
    """Where the first request in a buffer ends, read incrementally as bytes arrive (pure).

    `end(buf)` is None while more bytes are needed, else the length of the first request; when
    `as_is` is set, the request cannot be framed (see the module docstring) and is handed over
    as the buffer stands.
    """

    def __init__(self, max_body: int, max_head: int = MAX_HEAD_BYTES) -> None:
        self.max_body = max_body
        self.max_head = max_head
        self.as_is = False
        self.expects_continue = False
        self._body_start = -1
        self._length = -1  # the Content-Length; -1 while unknown or chunked
        self._chunked = False
        self._pos = 0  # chunked: where the next chunk-size line starts
        self._chunk_total = 0

    def end(self, buf: bytes | bytearray) -> int | None:
        if self._body_start < 0:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                return self._hand_over(buf) if len(buf) > self.max_head else None
            self._body_start = head_end + 4
            if not self._read_head(bytes(buf[:head_end])):
                return self._hand_over(buf)
            self._pos = self._body_start
        if self._chunked:
            return self._chunked_end(buf)
        if self._length > self.max_body:
            return self._hand_over(buf)
        need = self._body_start + max(self._length, 0)
        return need if len(buf) >= need else None

    def _hand_over(self, buf: bytes | bytearray) -> int:
        self.as_is = True
        return len(buf)

    def _read_head(self, head: bytes) -> bool:
        """Read the framing headers; False when they cannot be trusted to frame the body."""
        lines = head.split(b"\r\n")
        lengths: set[bytes] = set()
        codings: list[bytes] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                return False
            name = name.strip().lower()
            if name == b"content-length":
                lengths.update(v.strip() for v in value.split(b","))
            elif name == b"transfer-encoding":
                codings.extend(v.strip().lower() for v in value.split(b","))
            elif name == b"expect":
                self.expects_continue = value.strip().lower() == b"100-continue"
        if codings:
            # Both headers, or a last coding other than chunked: gunicorn refuses such requests.
            if lengths or codings[-1] != b"chunked":
                return False
            self._chunked = True
            return True
        if len(lengths) > 1:
            return False
        if lengths:
            [text] = lengths
            if not text.isdigit():
                return False
            self._length = int(text)
        return True

    def _chunked_end(self, buf: bytes | bytearray) -> int | None:
        while True:
            line_end = buf.find(b"\r\n", self._pos)
            if line_end < 0:
                return self._hand_over(buf) if len(buf) - self._pos > 8192 else None
            size_text = bytes(buf[self._pos : line_end]).split(b";", 1)[0].strip()
            if not size_text or not _HEX.issuperset(size_text):
                return self._hand_over(buf)
            size = int(size_text, 16)
            data_start = line_end + 2
            if size == 0:
                if buf[data_start : data_start + 2] == b"\r\n":
                    return data_start + 2
                trailers_end = buf.find(b"\r\n\r\n", data_start)
                if trailers_end >= 0:
                    return trailers_end + 4
                return self._hand_over(buf) if len(buf) - data_start > self.max_head else None
            # Checked as soon as the size is known (a chunk announced over the limit is handed
            # over at once), but counted only once the chunk is here: a chunk still arriving is
            # parsed again at each read, and must not be counted again each time.
            if self._chunk_total + size > self.max_body:
                return self._hand_over(buf)
            if len(buf) < data_start + size + 2:
                return None
            self._chunk_total += size
            self._pos = data_start + size + 2


# What a connection is doing, so that a callback of the loop acts only on a connection in the
# state it was registered for. One select() returns a batch of events, and a callback run
# earlier in the batch can move a connection on (the method queue's wake-up serves a pipelined
# request, a deadline closes it); that connection's own event later in the same batch is then
# stale, and carries the callback of the state it was in.
READING = "reading"  # registered for EVENT_READ with _on_readable, a deadline running
SERVING = "serving"  # its request is with the app (the loop itself, or a thread)
WRITING = "writing"  # its answer is being sent: registered for EVENT_WRITE, a deadline running
KEPT_ALIVE = "kept alive"  # in keepalived_conns, registered with on_client_socket_readable
NEXT = "next"  # kept alive with its next request already read: _next_request is deferred
CLOSED = "closed"


class Answer:
    """What the app's answer is written to, in place of the socket: a buffer.

    Gunicorn's response writes to the connection's socket with sendall, blocking until the
    client has read enough. Given this instead, serving never waits on the client; the event
    loop then sends the buffer without blocking, under one deadline for the whole answer.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = bytearray()
        self.shut = False  # gunicorn gave the connection up (an error after the headers)

    def sendall(self, data: bytes) -> None:
        self.data += data

    def send(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        file.seek(offset)
        data = file.read() if count is None else file.read(count)
        self.data += data
        return len(data)

    def recv(self, size: int) -> bytes:
        return b""  # the request was read whole already (gunicorn's close_graceful drains)

    def shutdown(self, how: int) -> None:
        self.shut = True

    def close(self) -> None:
        self.shut = True

    def setblocking(self, flag: bool) -> None:
        pass  # the socket stays non-blocking: only the event loop touches it

    def settimeout(self, value: float | None) -> None:
        pass

    def gettimeout(self) -> float | None:
        return None

    def fileno(self) -> int:
        return self.sock.fileno()

    def getpeername(self) -> Any:
        return self.sock.getpeername()

    def getsockname(self) -> Any:
        return self.sock.getsockname()


class BufferedConn(TConn):  # type: ignore[misc]
    """A client connection and the bytes the event loop has read from it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.state = READING
        self.buf = bytearray()
        self.framing: Framing | None = None
        self.deadline = 0.0
        self.reading = 0  # which wait this is (entries of older waits in the deadline queue)
        self.watched = False  # registered by _watch, its deadline running
        self.close_after = False
        self.continued = False
        self.out = bytearray()  # the answer being sent
        self.held = 0  # len(buf) + len(out) as last counted in the worker's total
        self.keep = False  # kept alive once its answer is sent

    def close(self, graceful: bool = False) -> None:
        # Every way out (ours, and gunicorn's murder_keepalived) passes here.
        self.state = CLOSED
        # Its entry in the deadline queue keeps this object until the deadline: not its bytes.
        self.buf = bytearray()
        self.out = bytearray()
        super().close(graceful)


class BufferedWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, with requests read whole by the event loop under a per-request deadline."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = load_settings()
        self.deadline_s = settings.web_request_deadline_s
        self.max_body = settings.max_body_bytes
        # The bytes all connections hold (BufferedConn.held), kept under this cap: without it,
        # clients each sending a body a byte short of MAX_BODY_BYTES grow the worker by as
        # much per connection.
        self.buffer_cap = settings.web_buffer_bytes
        self.buffered = 0
        # (deadline, connection, which read): appended in deadline order, since every read
        # gets the same allowance; an entry whose read is over is skipped when it comes up.
        self.deadlines: collections.deque[tuple[float, BufferedConn, int]] = collections.deque()

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        if cfg.is_ssl:
            raise RuntimeError("BufferedWorker serves plain HTTP: end TLS in front of it")
        super().check_config(cfg, log)

    # --- connections in, requests out -----------------------------------------------------

    def set_accept_enabled(self, enabled: bool) -> None:
        # gthread stops accepting at worker_connections, and then idle connections opened by
        # anyone keep everyone else out. Accept throughout instead: accept() makes room.
        super().set_accept_enabled(enabled or self.alive)

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        if self.nr_conns >= self.worker_connections and not self._shed():
            sock.close()  # every connection holds a request being served or answered
            return
        self.nr_conns += 1
        self._read(BufferedConn(self.cfg, sock, addr, listener.getsockname()))

    def on_client_socket_readable(self, conn: BufferedConn, client: socket.socket) -> None:
        """A kept-alive connection's next request begins: read it here, not on a thread."""
        if conn.state != KEPT_ALIVE:
            return  # a stale event: this connection moved on earlier in the same batch
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read(conn)

    def _read(self, conn: BufferedConn) -> None:
        conn.state = READING
        conn.framing = Framing(self.max_body)
        conn.continued = False
        conn.sock.setblocking(False)
        self._watch(conn, selectors.EVENT_READ, self._on_readable)
        if conn.buf:  # the next request was read with the previous one (pipelining)
            self._try_dispatch(conn)

    def _on_readable(self, conn: BufferedConn, client: socket.socket) -> None:
        if conn.state != READING:
            return  # stale, as above: dispatched or closed earlier in the same batch
        room = min(RECV_BYTES, self.buffer_cap - self.buffered)
        if room <= 0:
            # The worker holds all it may: the connection asking for more is refused, and
            # those that got their bytes in first are served.
            self.log.warning(
                "web: %d bytes buffered, the cap (WEB_BUFFER_BYTES): refusing a connection",
                self.buffered,
            )
            self._unwatch(conn)
            with contextlib.suppress(OSError):
                conn.sock.send(BUSY)
            self._close(conn)
            return
        try:
            data = conn.sock.recv(room)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._unwatch(conn)
            self._close(conn)
            return
        conn.buf += data
        self._account(conn)
        self._try_dispatch(conn)

    def _shed(self) -> bool:
        """Close the connection that has waited longest without a complete request: the
        oldest still sending one, else the oldest kept-alive one. False if none."""
        for _, conn, reading in self.deadlines:  # oldest first
            if conn.reading == reading and conn.state == READING:
                self._unwatch(conn)
                self._close(conn)
                return True
        if self.keepalived_conns:
            conn = self.keepalived_conns.popleft()
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
            self._close(conn)
            return True
        return False

    def _account(self, conn: BufferedConn) -> None:
        """Bring the worker's total up to date with what this connection holds now."""
        held = 0 if conn.state == CLOSED else len(conn.buf) + len(conn.out)
        self.buffered += held - conn.held
        conn.held = held

    def _try_dispatch(self, conn: BufferedConn) -> None:
        assert conn.framing is not None
        end = conn.framing.end(conn.buf)
        if end is None:
            if conn.framing.expects_continue and not conn.continued:
                # The client waits for this before sending its body (gunicorn would send it on
                # the thread, which only sees the request once the body is here).
                conn.continued = True
                with contextlib.suppress(OSError):
                    conn.sock.send(_CONTINUE)
            return
        self._unwatch(conn)
        conn.state = SERVING
        request = bytes(conn.buf[:end])
        del conn.buf[:end]
        self._account(conn)
        conn.close_after = conn.framing.as_is
        # A parser over this one request: the thread reads the buffer and never the socket
        # (the stream ends with the request). TConn.init() would parse the socket: skip it.
        conn.parser = http.get_parser(self.cfg, [request], conn.client)
        conn.initialized = True
        conn.data_ready = True
        self.enqueue_req(conn)

    def _watch(self, conn: BufferedConn, events: int, callback: Any) -> None:
        """Wait for the connection to be readable or writable, under a deadline."""
        conn.reading += 1
        conn.deadline = time.monotonic() + self.deadline_s
        self.deadlines.append((conn.deadline, conn, conn.reading))
        self.poller.register(conn.sock, events, partial(callback, conn))
        conn.watched = True

    def _unwatch(self, conn: BufferedConn) -> None:
        if not conn.watched:
            return
        conn.watched = False
        conn.reading += 1  # its entry in the deadline queue no longer counts
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def _close(self, conn: BufferedConn) -> None:
        if conn.state == CLOSED:
            return  # counted out already
        self.nr_conns -= 1
        conn.close()
        self._account(conn)

    def _keepalive_after(self, conn: BufferedConn, keepalive: bool) -> bool:
        # A request handed over unframed may have left body bytes on the socket.
        if conn.close_after:
            return False
        return bool(super()._keepalive_after(conn, keepalive))

    def enqueue_req(self, conn: BufferedConn) -> None:
        if self.cfg.threads > 1:
            super().enqueue_req(conn)
            return
        # One thread: serve the complete request right here. A pool of one costs two
        # cross-thread hand-offs per request and serves no more at once (measured: gthread's
        # pool of one took 25-40 % more CPU per request of the bare app, BENCHMARKS.md); the
        # loop waits meanwhile, as it would for the one thread.
        done: futures.Future[bool] = futures.Future()
        try:
            done.set_result(self.handle(conn))
        except BaseException as exc:  # as the pool's future would carry it
            done.set_exception(exc)
        self.finish_request(conn, done)

    def handle(self, conn: BufferedConn) -> Any:
        # The answer goes to a buffer, which the loop then sends (finish_request).
        sock = conn.sock
        answer = conn.sock = Answer(sock)
        try:
            keepalive = super().handle(conn)
        finally:
            conn.sock = sock
            conn.out += answer.data
        return keepalive is True and not answer.shut

    def finish_request(self, conn: BufferedConn, fs: Any) -> None:
        # gunicorn's, less what cannot happen here (a thread deferring a connection that had
        # no data, the parser holding bytes read ahead), with the state kept, and the answer
        # sent without blocking.
        try:
            conn.keep = not fs.cancelled() and fs.result() is True
        except Exception:
            conn.keep = False
        self._account(conn)  # its answer, written meanwhile
        if conn.state == CLOSED:
            return
        conn.state = WRITING
        self._on_writable(conn, conn.sock)

    def _on_writable(self, conn: BufferedConn, client: socket.socket) -> None:
        if conn.state != WRITING:
            return  # stale, as above
        try:
            sent = conn.sock.send(conn.out) if conn.out else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the client went away
            self._unwatch(conn)
            self._close(conn)
            return
        del conn.out[:sent]
        self._account(conn)
        if conn.out:
            # The client is not reading as fast: wait until it does, under one deadline for
            # the whole answer (a send timeout would bound each send, and a client reading a
            # little now and then would never reach it). Its next request waits meanwhile.
            if not conn.watched:
                self._watch(conn, selectors.EVENT_WRITE, self._on_writable)
            return
        self._unwatch(conn)
        self._answered(conn)

    def _answered(self, conn: BufferedConn) -> None:
        if not conn.keep:
            # RFC 9112 section 9.6: half-close, then drain what the client sent meanwhile so
            # that closing does not reset the connection under the answer. gunicorn lingers
            # blocking for this (close_graceful); the loop must not, so it drains what is
            # there now.
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
                for _ in range(4):  # as far as gunicorn's cap, not for a client sending on
                    if not conn.sock.recv(RECV_BYTES // 4):
                        break
            self._close(conn)
            return
        if conn.buf:
            # Its next request is already read: the socket may never be readable again, so
            # that request is not left waiting for it. Deferred to the loop, never called from
            # here: a client pipelining thousands of requests would recurse.
            conn.state = NEXT
            self.method_queue.defer(self._next_request, conn)
            return
        conn.set_timeout()
        if not self.alive:  # stopping: kept for a request the client may be sending already
            conn.timeout = min(conn.timeout, time.monotonic() + STOP_KEEPALIVE_LINGER)
        conn.state = KEPT_ALIVE
        self.keepalived_conns.append(conn)
        self.poller.register(
            conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn)
        )

    def _next_request(self, conn: BufferedConn) -> None:
        if conn.state == NEXT:
            self._read(conn)

    # --- deadlines ------------------------------------------------------------------------

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, conn, reading = self.deadlines.popleft()
            if conn.reading != reading:
                continue  # that read ended (dispatched, or the client left)
            if conn.state == WRITING:  # the client does not read its answer
                self._unwatch(conn)
                self._close(conn)
                continue
            self._unwatch(conn)
            if conn.buf:
                # Not a silent close: the client is told why (a partial request was sent).
                with contextlib.suppress(OSError):
                    conn.sock.send(REQUEST_TIMEOUT)
            self._close(conn)
