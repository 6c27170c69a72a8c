"""A loopback HTTP server standing in for Customer.io Pipelines, for tests, benchmarks and chaos.

In-process: `with PipelinesStandIn(write_keys={"k"}) as s: ... s.url ... s.wait_for(3)`.
Separate process: `python -m tests.pipelines_standin --port 0 --write-key k [--delay-ms 80]
[--fault-rate 0.2 --seed 1]` prints its URL on the first stdout line; `/_standin/*` is the
control surface (stats, calls, reset, config, script). Stdlib only (ThreadingHTTPServer, one
daemon thread per connection, HTTP/1.1 keep-alive); it never logs a request.

Documented Pipelines behaviour it copies (/work/shared/docs/pipelines-api.md):
- POST /v1/batch, /v1/identify, /v1/track, /v1/page, /v1/screen, /v1/group, /v1/alias; others 404.
- HTTP Basic auth with the write key as username and an empty password (`base64("KEY:")`);
  `Content-Type: application/json`.
- Required fields: `type` inside a batch (the single-call endpoints set it: a call posted to
  /v1/track is a track); `userId` or `anonymousId` for identify, track, page and screen; `event`
  for track; `previousId` and `userId` for alias.
- Limits: 32 KB per call (a single-call request is the call), 500 KB per batch request. They
  are written below as the docs state them, never taken from the bridge's own constants: the
  stand-in exists to check the bridge against the docs.
- `X-Strict-Mode: 1`: an invalid request gets 400 `{"meta":{"errors":[...]}}` (401 for a bad
  key) and nothing in it is accepted. Without the header every request gets 200 `{}` and what
  is invalid is silently dropped (recorded in `dropped`).
- Success: 200 `{}`.

Choices of its own, where the real API's behaviour is undocumented or unverified:
- An oversize request in strict mode gets `oversize_status` (413 by default). Customer.io
  documents only "200, but the request will not go through"; a 413 lets tests exercise batch
  splitting. `oversize_status=200` restores the documented drop.
- Permissive mode drops only the invalid calls of a batch and keeps the valid ones; a bad key,
  a bad body or an oversize request drops the whole request.
- `alias` inside a batch is refused unless `allow_alias_in_batch` (the docs don't list it).
- An empty batch is valid.
- KB is read as 1024 bytes, as Customer.io's Python client reads it for a call (32<<10); the
  docs give no byte count for the 500 KB batch limit.
- An Authorization header other than exactly `Basic base64(KEY:)` (a password, no colon) is
  refused like a wrong key; a Content-Type other than application/json (parameters allowed) is
  a 400.
- `delay_s` is spent after the calls are recorded, so a client that times out has still
  delivered them, as with a slow real answer.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import random
import signal
import socket
import socketserver
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Literal, Self, cast
from urllib.parse import parse_qs

import orjson

Call = dict[str, Any]
FaultAction = Literal["respond", "drop_before", "drop_after"]

API_PREFIX = "/v1/"
CONTROL_PREFIX = "/_standin/"
ENDPOINTS = frozenset({"batch", "identify", "track", "page", "screen", "group", "alias"})
CALL_TYPES = frozenset({"identify", "track", "page", "screen", "group", "alias"})
_NEEDS_ID = frozenset({"identify", "track", "page", "screen"})
# pipelines-api.md section 3: "One call 32 KB", "One batch 500 KB in total, and 32 KB per call
# inside it".
MAX_CALL_BYTES = 32 * 1024
MAX_REQUEST_BYTES = 500 * 1024
UNAUTHORIZED = "Unauthorized request. Make sure that you provided the right credentials."
# Bodies past this are not read at all: answer and hang up, as a real front end would.
_READ_LIMIT_BYTES = 16 * 1024 * 1024
_MAX_REPORTED_ERRORS = 100
_MAX_LINE = 65536
_MAX_HEADERS = 100
_OK = b"{}"


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure: answer `status` (with headers/body), or hang up before or after
    accepting the request's calls (`drop_before` / `drop_after`)."""

    status: int = 500
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    action: FaultAction = "respond"

    @property
    def label(self) -> str:
        return str(self.status) if self.action == "respond" else self.action


FaultSpec = Fault | int | str | tuple[Any, ...] | Mapping[str, Any]

# What `fault_rate` picks from: the failures a client has to survive.
CHAOS_FAULTS: tuple[Fault, ...] = (
    Fault(500),
    Fault(503),
    Fault(429, {"Retry-After": "1"}),
    Fault(action="drop_before"),
    Fault(action="drop_after"),
)


def as_fault(spec: FaultSpec) -> Fault:
    """Build a Fault from `500`, `"drop_before"`, `(429, {"Retry-After": "1"}[, body])`, or a
    JSON object `{"status"|"action", "headers", "body"}`; raises ValueError for anything else."""
    if isinstance(spec, Fault):
        return spec
    if isinstance(spec, bool):
        raise ValueError(f"not a fault: {spec!r}")
    if isinstance(spec, int):
        return Fault(spec)
    if isinstance(spec, str):
        if spec == "drop_before":
            return Fault(action="drop_before")
        if spec == "drop_after":
            return Fault(action="drop_after")
        if spec.isdigit():
            return Fault(int(spec))
        raise ValueError(f"not a fault: {spec!r}")
    if isinstance(spec, tuple) and 1 <= len(spec) <= 3:
        status, headers, body = (*spec, None, None)[:3]
        return Fault(int(status), dict(headers or {}), _as_bytes(body))
    if isinstance(spec, Mapping):
        action = spec.get("action", "respond")
        if action not in ("respond", "drop_before", "drop_after"):
            raise ValueError(f"unknown fault action {action!r}")
        return Fault(
            int(spec.get("status", 500)),
            dict(spec.get("headers") or {}),
            _as_bytes(spec.get("body")),
            action,
        )
    raise ValueError(f"not a fault: {spec!r}")


def _as_bytes(body: object) -> bytes | None:
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return orjson.dumps(body)


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted call, as parsed, with when (wall clock) and under which key it arrived."""

    call: Call
    received_at: float
    write_key: str
    request_no: int


@dataclass(frozen=True, slots=True)
class Dropped:
    """What permissive mode (or a 200 oversize) silently threw away, and why."""

    reason: str
    call: Call | None
    write_key: str | None


@dataclass(slots=True)
class _Verdict:
    """What a request is, before faults and strict mode decide what to answer."""

    write_key: str | None
    calls: list[Call]
    problem: str | None = None  # the whole request is refused
    problem_status: int = 400
    call_problems: dict[int, str] = field(default_factory=dict)
    in_batch: bool = True


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: int
    body: bytes
    label: str
    headers: Mapping[str, str] = field(default_factory=dict)
    hang_up: bool = False


def _errors_body(errors: Sequence[str]) -> bytes:
    return orjson.dumps({"meta": {"errors": list(errors[:_MAX_REPORTED_ERRORS])}})


def _present(call: Call, key: str) -> bool:
    value = call.get(key)
    return value is not None and value != ""


def call_problem(call: object, kind: str | None, *, allow_alias: bool = True) -> str | None:
    """Why Pipelines would refuse this call (`kind` is the endpoint's type, None inside a batch);
    None when it is valid. Pure."""
    if not isinstance(call, dict):
        return "call must be a JSON object"
    if kind is None:
        kind = call.get("type")
        if not kind:
            return "type is required in a batch call"
        if kind not in CALL_TYPES:
            return f"unknown type {kind!r}"
        if kind == "alias" and not allow_alias:
            return "alias is not allowed in a batch"
    if kind in _NEEDS_ID and not (_present(call, "userId") or _present(call, "anonymousId")):
        return f"{kind} needs userId or anonymousId"
    if kind == "track" and not _present(call, "event"):
        return "track needs event"
    if kind == "alias" and not (_present(call, "previousId") and _present(call, "userId")):
        return "alias needs previousId and userId"
    return None


def _basic_key(authorization: str | None) -> str | None:
    """The write key of a `Basic base64(KEY:)` header; None for any other form (a password, no
    colon), since the docs give only that one."""
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    key, colon, password = decoded.partition(":")
    return key if colon and not password else None


class PipelinesStandIn:
    """A Pipelines look-alike on 127.0.0.1 that records what it accepts; thread-safe.

    `start()` binds (port 0 = ephemeral) and serves on a daemon thread; `stop()` closes the
    listener and every open connection. Faults (`script`, `fault_rate`) and `delay_s` apply to
    API requests only, never to `/_standin/*`.
    """

    def __init__(
        self,
        *,
        write_keys: Iterable[str] = ("test-write-key",),
        port: int = 0,
        host: str = "127.0.0.1",
        delay_s: float = 0.0,
        fault_rate: float = 0.0,
        seed: int | None = None,
        oversize_status: int = 413,
        allow_alias_in_batch: bool = False,
        max_call_bytes: int = MAX_CALL_BYTES,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        chaos_faults: Sequence[FaultSpec] = CHAOS_FAULTS,
    ) -> None:
        self.write_keys: frozenset[str] = frozenset(write_keys)
        self.delay_s = delay_s
        self.fault_rate = fault_rate
        self.oversize_status = oversize_status
        self.allow_alias_in_batch = allow_alias_in_batch
        self.max_call_bytes = max_call_bytes
        self.max_request_bytes = max_request_bytes
        self.chaos_faults: tuple[Fault, ...] = tuple(as_fault(f) for f in chaos_faults)
        self._host = host
        self._port = port
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self._script: deque[Fault] = deque()
        self._records: list[Received] = []
        self._dropped: list[Dropped] = []
        self._call_counts: list[int] = []
        self._outcomes: Counter[str] = Counter()
        self._connections = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind and start serving; returns self. Raises RuntimeError if already started."""
        if self._server is not None:
            raise RuntimeError("stand-in already started")
        self._stopping.clear()
        server = _Server((self._host, self._port), _Handler)
        server.standin = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="pipelines-standin",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and hang up every open connection; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in `delay_s`
        server.shutdown()
        server.server_close()
        with self._lock:
            open_now = list(self._open)
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("stand-in is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """`http://HOST:PORT/v1`, the base URL a client should be given."""
        return f"http://{self._host}:{self.port}/v1"

    # -- configuration and faults ------------------------------------------------------------

    def configure(
        self,
        *,
        delay_s: float | None = None,
        fault_rate: float | None = None,
        write_keys: Iterable[str] | None = None,
        seed: int | None = None,
        oversize_status: int | None = None,
    ) -> None:
        """Change behaviour while running; None leaves a setting as it is."""
        with self._lock:
            if delay_s is not None:
                self.delay_s = float(delay_s)
            if fault_rate is not None:
                self.fault_rate = float(fault_rate)
            if write_keys is not None:
                self.write_keys = frozenset(write_keys)
            if seed is not None:
                self._rng = random.Random(seed)
            if oversize_status is not None:
                self.oversize_status = int(oversize_status)

    def script(self, *faults: FaultSpec) -> None:
        """Queue faults for the next API requests, one request each, in order."""
        parsed = [as_fault(f) for f in faults]
        with self._lock:
            self._script.extend(parsed)

    def reset(self) -> None:
        """Forget every record, counter and queued fault; configuration stays."""
        with self._lock:
            self._script.clear()
            self._records.clear()
            self._dropped.clear()
            self._call_counts.clear()
            self._outcomes.clear()
            self._connections = 0

    # -- records -----------------------------------------------------------------------------

    @property
    def records(self) -> list[Received]:
        with self._lock:
            return list(self._records)

    @property
    def calls(self) -> list[Call]:
        """Accepted calls in arrival order (a copy of the list; the dicts are shared)."""
        with self._lock:
            return [r.call for r in self._records]

    def calls_since(self, index: int) -> list[Call]:
        with self._lock:
            return [r.call for r in self._records[max(index, 0) :]]

    def message_ids(self) -> list[str | None]:
        with self._lock:
            return [r.call.get("messageId") for r in self._records]

    @property
    def dropped(self) -> list[Dropped]:
        with self._lock:
            return list(self._dropped)

    @property
    def requests(self) -> int:
        """API requests received, faulted ones included (control requests are not counted)."""
        with self._lock:
            return len(self._call_counts)

    @property
    def request_call_counts(self) -> list[int]:
        """How many calls each API request carried, in arrival order (0 if unreadable)."""
        with self._lock:
            return list(self._call_counts)

    @property
    def outcomes(self) -> dict[str, int]:
        """Requests per answer: "200", "400", ..., "drop_before", "drop_after"."""
        with self._lock:
            return dict(self._outcomes)

    @property
    def connections(self) -> int:
        """TCP connections accepted since start or reset (keep-alive keeps this low)."""
        with self._lock:
            return self._connections

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": len(self._call_counts),
                "calls": len(self._records),
                "dropped": len(self._dropped),
                "connections": self._connections,
                "open_connections": len(self._open),
                "statuses": dict(self._outcomes),
                "pending_faults": len(self._script),
            }

    def wait_for(self, n_calls: int, timeout_s: float = 5.0) -> bool:
        """Block until at least `n_calls` calls were accepted; False if `timeout_s` ran out."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._records) >= n_calls, timeout_s)

    # -- request handling (called from handler threads) --------------------------------------

    def _connection_opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            self._open.add(sock)

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def _inspect(
        self, endpoint: str, body: bytes, authorization: str | None, content_type: str | None
    ) -> _Verdict:
        # Parsing and validation happen outside the lock: they are the expensive part.
        key = _basic_key(authorization)
        if key is None or key not in self.write_keys:
            return _Verdict(None, [], UNAUTHORIZED, 401)
        verdict = _Verdict(key, [], in_batch=endpoint == "batch")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
            verdict.problem = "request body is not valid JSON"
        if endpoint == "batch":
            batch = doc.get("batch") if isinstance(doc, dict) else None
            if isinstance(batch, list):
                verdict.calls = batch
            elif verdict.problem is None:
                verdict.problem = 'body must be {"batch": [...]}'
        elif isinstance(doc, dict):
            doc["type"] = endpoint  # the single-call endpoints set it
            verdict.calls = [doc]
        elif verdict.problem is None:
            verdict.problem = "body must be a JSON object"
        mimetype = (content_type or "").partition(";")[0].strip().lower()
        if mimetype != "application/json":
            verdict.problem = "Content-Type must be application/json"
            return verdict
        # A single-call request is the call: the per-call limit is its limit.
        limit = self.max_request_bytes if endpoint == "batch" else self.max_call_bytes
        if len(body) > limit:
            verdict.problem = f"request is {len(body)} bytes, over the {limit} byte limit"
            verdict.problem_status = self.oversize_status
            return verdict
        if verdict.problem is not None:
            return verdict
        kind = None if endpoint == "batch" else endpoint
        allow_alias = self.allow_alias_in_batch
        for i, call in enumerate(verdict.calls):
            problem = call_problem(call, kind, allow_alias=allow_alias)
            if problem is not None:
                verdict.call_problems[i] = problem
        # No call can be over the limit when the whole body is under it: skip re-serialising.
        if len(body) > self.max_call_bytes:
            for i, call in enumerate(verdict.calls):
                size = len(orjson.dumps(call))
                if size > self.max_call_bytes:
                    verdict.problem = (
                        f"call {i} is {size} bytes, over the {self.max_call_bytes} byte limit"
                    )
                    verdict.problem_status = self.oversize_status
                    break
        return verdict

    def _handle_api(
        self,
        endpoint: str,
        body: bytes,
        authorization: str | None,
        content_type: str | None,
        strict: bool,
    ) -> _Outcome:
        verdict = self._inspect(endpoint, body, authorization, content_type)
        now = time.time()
        with self._lock:
            request_no = len(self._call_counts)
            self._call_counts.append(len(verdict.calls))
            fault = self._next_fault()
            if fault is not None and fault.action == "drop_before":
                outcome = _Outcome(0, b"", fault.label, hang_up=True)
            elif fault is not None and fault.action == "respond":
                body_out = fault.body
                if body_out is None:
                    body_out = _errors_body([f"stand-in fault {fault.status}"])
                outcome = _Outcome(fault.status, body_out, fault.label, fault.headers)
            else:
                outcome = self._decide(verdict, strict, now, request_no)
                if fault is not None:  # drop_after: accepted (or not), and the answer is lost
                    outcome = _Outcome(0, b"", fault.label, hang_up=True)
            self._outcomes[outcome.label] += 1
        return outcome

    def _next_fault(self) -> Fault | None:
        # Caller holds the lock (the rng and the script are shared by handler threads).
        if self._script:
            return self._script.popleft()
        if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
            return self._rng.choice(self.chaos_faults)
        return None

    def _decide(self, verdict: _Verdict, strict: bool, now: float, request_no: int) -> _Outcome:
        # Caller holds the lock.
        key = verdict.write_key
        if verdict.problem is not None:
            if strict and verdict.problem_status != 200:
                status = verdict.problem_status
                return _Outcome(status, _errors_body([verdict.problem]), str(status))
            if verdict.calls:
                self._dropped.extend(
                    Dropped(verdict.problem, c if isinstance(c, dict) else None, key)
                    for c in verdict.calls
                )
            else:
                self._dropped.append(Dropped(verdict.problem, None, key))
            return _Outcome(200, _OK, "200")
        assert key is not None  # no problem means the key was accepted
        if verdict.call_problems:
            if strict:
                errors = [
                    f"batch[{i}]: {p}" if verdict.in_batch else p
                    for i, p in verdict.call_problems.items()
                ]
                return _Outcome(400, _errors_body(errors), "400")
            for i, problem in verdict.call_problems.items():
                call = verdict.calls[i]
                kept = call if isinstance(call, dict) else None
                self._dropped.append(Dropped(problem, kept, key))
        accepted = [
            Received(call, now, key, request_no)
            for i, call in enumerate(verdict.calls)
            if i not in verdict.call_problems
        ]
        if accepted:
            self._records.extend(accepted)
            self._changed.notify_all()
        return _Outcome(200, _OK, "200")

    def _control(self, method: str, path: str, query: str, body: bytes) -> tuple[int, bytes]:
        """Answer a `/_standin/*` request: (status, JSON body)."""
        name = path[len(CONTROL_PREFIX) :]
        if method == "GET" and name == "stats":
            return 200, orjson.dumps(self.stats())
        if method == "GET" and name == "calls":
            since = parse_qs(query).get("since", ["0"])[0]
            if not since.isdigit():
                return 400, _errors_body(["since must be a non-negative integer"])
            return 200, orjson.dumps(self.calls_since(int(since)))
        if method == "POST" and name == "reset":
            self.reset()
            return 200, _OK
        if method == "POST" and name in ("config", "script"):
            try:
                doc = orjson.loads(body) if body else {}
                if not isinstance(doc, dict):
                    raise ValueError("body must be a JSON object")
                if name == "config":
                    self.configure(
                        delay_s=doc.get("delay_s"),
                        fault_rate=doc.get("fault_rate"),
                        write_keys=doc.get("write_keys"),
                        seed=doc.get("seed"),
                        oversize_status=doc.get("oversize_status"),
                    )
                else:
                    self.script(*doc.get("faults", []))
            except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
                return 400, _errors_body([str(exc)])
            return 200, orjson.dumps(self.settings())
        return 404, _errors_body([f"no control endpoint {method} {path}"])

    def settings(self) -> dict[str, Any]:
        """The current configuration (write keys listed: this is a test double)."""
        return {
            "delay_s": self.delay_s,
            "fault_rate": self.fault_rate,
            "write_keys": sorted(self.write_keys),
            "oversize_status": self.oversize_status,
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 refuses connections when a benchmark opens many at once.
    request_queue_size = 256
    standin: PipelinesStandIn

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can take seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-request is normal here (timeouts, chaos, stop()).
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections give their thread back after this long.
    timeout = 60
    _headers: dict[str, str]

    @property
    def _standin(self) -> PipelinesStandIn:
        return cast(_Server, self.server).standin

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._standin._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._standin._connection_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: per-request logging would dominate a benchmark."""

    def handle_one_request(self) -> None:
        """Read one request and dispatch it, parsing headers into a plain dict.

        Replaces the stdlib parser (built on the email package), which cost about half of the
        stand-in's time per request; chunked bodies are not supported (Content-Length is).
        """
        try:
            line = self.rfile.readline(_MAX_LINE + 1)
            if not line:
                self.close_connection = True
                return
            parts = line.split()
            if len(line) > _MAX_LINE or len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                self.close_connection = True
                self._write(400, _errors_body(["malformed request line"]))
                return
            headers: dict[str, str] = {}
            while True:
                raw = self.rfile.readline(_MAX_LINE + 1)
                if raw in (b"\r\n", b"\n", b""):
                    break
                if len(raw) > _MAX_LINE or len(headers) >= _MAX_HEADERS:
                    self.close_connection = True
                    self._write(431, _errors_body(["request headers too large"]))
                    return
                name, _, value = raw.partition(b":")
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
            self.command = parts[0].decode("latin-1")
            self.path = parts[1].decode("latin-1")
            self.request_version = parts[2].decode("latin-1")
            self._headers = headers
            connection = headers.get("connection", "").lower()
            if self.request_version == "HTTP/1.0":
                self.close_connection = connection != "keep-alive"
            else:
                self.close_connection = connection == "close"
            if headers.get("expect", "").lower() == "100-continue":
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if self.command == "POST":
                self.do_POST()
            elif self.command == "GET":
                self.do_GET()
            else:
                self.close_connection = True
                self._write(405, _errors_body([f"method {self.command} not allowed"]))
        except TimeoutError:
            # An idle keep-alive connection ran past `timeout`: hang up.
            self.close_connection = True

    def _write(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        # One write per response: status line, headers and body together.
        lines = [
            f"HTTP/1.1 {status} {_reason(status)}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        for name, value in (headers or {}).items():
            if name.lower() == "connection" and value.lower() == "close":
                self.close_connection = True
            elif name.lower() not in ("content-length", "content-type"):
                lines.append(f"{name}: {value}")
        if self.close_connection:
            lines.append("Connection: close")
        head = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"
        self.wfile.write(head + body)

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering a request whose body cannot be read."""
        raw = self._headers.get("content-length")
        if raw is None or not raw.strip().isdigit():
            self.close_connection = True
            self._write(411, _errors_body(["Content-Length is required"]))
            return None
        length = int(raw)
        if length > _READ_LIMIT_BYTES:
            self.close_connection = True
            self._write(413, _errors_body([f"request is {length} bytes"]))
            return None
        return self.rfile.read(length)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path.startswith(CONTROL_PREFIX):
            status, body = self._standin._control("GET", path, query, b"")
        else:
            status, body = 404, _errors_body([f"no endpoint GET {path}"])
        self._write(status, body)

    def do_POST(self) -> None:
        body = self._read_body()
        if body is None:
            return
        standin = self._standin
        path, _, query = self.path.partition("?")
        if path.startswith(CONTROL_PREFIX):
            self._write(*standin._control("POST", path, query, body))
            return
        endpoint = path[len(API_PREFIX) :] if path.startswith(API_PREFIX) else ""
        if endpoint not in ENDPOINTS:
            self._write(404, _errors_body([f"no endpoint POST {path}"]))
            return
        strict = self._headers.get("x-strict-mode", "") == "1"
        outcome = standin._handle_api(
            endpoint,
            body,
            self._headers.get("authorization"),
            self._headers.get("content-type"),
            strict,
        )
        delay = standin.delay_s
        if delay > 0:
            standin._stopping.wait(delay)
        if outcome.hang_up:
            # Nothing written: the client sees the connection close with no response.
            self.close_connection = True
            return
        self._write(outcome.status, outcome.body, outcome.headers)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a stand-in until SIGTERM or Ctrl-C; print its URL as the first stdout line."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.pipelines_standin",
        description="Loopback stand-in for Customer.io Pipelines",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--write-key", dest="write_keys", action="append", required=True, help="repeatable"
    )
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to every answer")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of requests faulted")
    parser.add_argument("--seed", type=int, default=None, help="seed for the fault choice")
    parser.add_argument("--oversize-status", type=int, default=413)
    parser.add_argument("--allow-alias-in-batch", action="store_true")
    args = parser.parse_args(argv)

    standin = PipelinesStandIn(
        write_keys=args.write_keys,
        port=args.port,
        host=args.host,
        delay_s=args.delay_ms / 1000.0,
        fault_rate=args.fault_rate,
        seed=args.seed,
        oversize_status=args.oversize_status,
        allow_alias_in_batch=args.allow_alias_in_batch,
    )

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    standin.start()
    try:
        print(standin.url, flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
