"""Slow clients against real gunicorn (the Procfile's command and gunicorn.conf.py): requests
are read whole by each worker's event loop (bridge/web/server.py), so clients that trickle their
requests hold no worker, and each is answered 408 and closed after WEB_REQUEST_DEADLINE_S.

No timings are asserted: every wait is a generous upper bound, far above the time taken."""

from __future__ import annotations

import contextlib
import http.client
import json
import shlex
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib

from bridge.config.settings import Settings
from bridge.store.facade import Keys
from tests.conftest import (
    ROOT,
    SHOP,
    fixture_bytes,
    free_port,
    service_env,
    wait_until,
    webhook_headers,
)

WORKERS = 2
SLOW = 16  # more slow clients than the web has workers (and threads)
GENEROUS_S = 20.0
PARTIAL = (
    b"POST /webhooks/shopify HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n"
    b'{"id": 12'  # 9 of the 1 000 bytes announced
)


def procfile_command(name: str) -> list[str]:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return shlex.split(line.split(":", 1)[1])
    raise AssertionError(f"no {name} in Procfile")


class Web:
    """Starts the web (the Procfile's command) with a request deadline; each start gives its
    port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.masters: dict[int, subprocess.Popen[bytes]] = {}

    def __call__(self, deadline_s: float, workers: int = WORKERS, **env: str) -> int:
        port = free_port()
        environ = service_env(
            self.settings,
            PORT=str(port),
            WEB_CONCURRENCY=str(workers),
            WEB_REQUEST_DEADLINE_S=str(deadline_s),
            **env,
        )
        self.masters[port] = subprocess.Popen(procfile_command("web"), env=environ, cwd=ROOT)

        def up() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return True
            except OSError:
                return False

        assert wait_until(up, 30), "gunicorn did not come up"
        return port

    def worker_pids(self, port: int) -> set[int]:
        """The pids of the web's workers now (gunicorn starts a new one when one exits)."""
        pid = self.masters[port].pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return {int(child) for child in children.split()}


@pytest.fixture
def web(settings: Settings) -> Iterator[Web]:
    start = Web(settings)
    yield start
    for proc in start.masters.values():
        proc.terminate()
    for proc in start.masters.values():
        proc.wait(30)


def slow_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=GENEROUS_S)
    sock.sendall(PARTIAL)
    return sock


def still_open(sock: socket.socket) -> bool:
    """True while the server has neither answered nor closed this connection."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


def post_webhook(port: int, webhook_id: str) -> tuple[int, bytes]:
    body = fixture_bytes("carts-create")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=GENEROUS_S)
    try:
        conn.request(
            "POST",
            "/webhooks/shopify",
            body,
            webhook_headers(body, "carts/create", webhook_id=webhook_id),
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=GENEROUS_S)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_slow_clients_hold_no_worker(web: Web, redis: redis_lib.Redis) -> None:
    port = web(120.0)  # far longer than the test: every slow client stays open throughout
    slow = [slow_client(port) for _ in range(SLOW)]
    try:
        for i in range(4):
            assert post_webhook(port, f"while-slow-{i}") == (200, b'{"ok":true}')
            assert get(port, "/healthz") == 200
        assert redis.llen(Keys(SHOP).inbound) == 4
        assert all(still_open(sock) for sock in slow)  # they were all there meanwhile
    finally:
        for sock in slow:
            sock.close()


def test_a_trickling_client_is_answered_408_and_closed_after_the_deadline(web: Web) -> None:
    port = web(1.0)
    sock = slow_client(port)
    stop = threading.Event()

    def trickle() -> None:
        # A byte every 0.2 s: no single read waits long, only the whole request is late.
        while not stop.wait(0.2):
            try:
                sock.send(b"0")
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    answer = b""
    try:
        sock.settimeout(GENEROUS_S)
        while chunk := sock.recv(4096):  # until the server closes (else a timeout fails it)
            answer += chunk
    finally:
        stop.set()
        sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body) == {"error": "request timeout"}
    assert post_webhook(port, "after-the-deadline")[0] == 200


def test_chunked_pipelined_and_100_continue_requests_are_served(
    web: Web, redis: redis_lib.Redis
) -> None:
    port = web(30.0)
    body = fixture_bytes("carts-create")
    headers = webhook_headers(body, "carts/create", webhook_id="chunked-1")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
    half = len(body) // 2
    chunks = (half, body[:half], len(body) - half, body[half:])
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % chunks
    with socket.create_connection(("127.0.0.1", port), timeout=GENEROUS_S) as sock:
        sock.sendall(
            b"POST /webhooks/shopify HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n"
            + head
            + b"\r\n"
            + chunked
            + b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"  # pipelined
        )
        answers = read_until_closed(sock)
    assert answers.count(b"HTTP/1.1 200 OK") == 2, answers
    assert b'{"ok":true}' in answers
    headers = webhook_headers(body, "carts/create", webhook_id="continued-1")
    headers["Expect"] = "100-continue"
    headers["Content-Length"] = str(len(body))
    headers["Connection"] = "close"
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=GENEROUS_S) as sock:
        sock.sendall(b"POST /webhooks/shopify HTTP/1.1\r\nHost: b\r\n" + head + b"\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        answers = read_until_closed(sock)
    # Gunicorn's thread sends its own 100 too: a client must take any number of 1xx
    # (RFC 9110 section 15.2).
    final = answers.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert final.startswith(b"HTTP/1.1 200 OK") and final.endswith(b'{"ok":true}')
    assert redis.llen(Keys(SHOP).inbound) == 2


def read_until_closed(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_a_non_ascii_bearer_is_401_through_gunicorn(settings: Settings, web: Web) -> None:
    port = web(30.0)
    with socket.create_connection(("127.0.0.1", port), timeout=GENEROUS_S) as sock:
        sock.sendall(
            b"GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n"
            b"Authorization: Bearer caf\xc3\xa9-\xe2\x82\xac\r\n\r\n"
        )
        assert read_until_closed(sock).startswith(b"HTTP/1.1 401 ")


def test_kept_alive_connections_serve_request_after_request(web: Web) -> None:
    port = web(30.0)
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=GENEROUS_S) for _ in range(8)]
    for _ in range(3):
        for conn in conns:
            conn.request("GET", "/healthz")
        for conn in conns:
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b'{"ok":true}')
    for conn in conns:
        conn.close()


def test_a_client_pipelining_without_pause_never_takes_the_worker_down(web: Web) -> None:
    # One worker, so the probe shares it with the pipelining client. Batches of pipelined
    # requests keep the loop serving a request read with the previous one at the moment the
    # socket turns readable again: both come up together, and neither may find the connection
    # where the other left it (that crashed the worker, which gunicorn then replaced).
    port = web(30.0, workers=1)
    pids = web.worker_pids(port)
    assert len(pids) == 1
    batch = b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n" * 50
    stop = threading.Event()

    def drain(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass

    def pipeline() -> None:
        while not stop.is_set():
            with socket.create_connection(("127.0.0.1", port), timeout=GENEROUS_S) as sock:
                threading.Thread(target=drain, args=(sock,), daemon=True).start()
                with contextlib.suppress(OSError):
                    while not stop.is_set():
                        sock.sendall(batch)

    pipeliner = threading.Thread(target=pipeline, daemon=True)
    pipeliner.start()
    answered = 0
    try:
        until = time.monotonic() + 5.0  # how long it runs, not a bound on anything
        while time.monotonic() < until:
            assert get(port, "/healthz") == 200
            answered += 1
    finally:
        stop.set()
        pipeliner.join(GENEROUS_S)
    assert answered > 0
    assert web.worker_pids(port) == pids


def server_side(port: int, client: socket.socket) -> tuple[int, int] | None:
    """The web's end of this client's connection: None once closed, else the bytes it holds
    unsent and unread (from /proc/net/tcp, whatever the client has yet to read)."""
    ours = f"0100007F:{client.getsockname()[1]:04X}"
    theirs = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state, queues = line.split()[1:5]
        if (local, remote, state) == (theirs, ours, "01"):  # 01: ESTABLISHED
            unsent, unread = queues.split(":")
            return int(unsent, 16), int(unread, 16)
    return None


def unsent(port: int, client: socket.socket) -> int | None:
    queues = server_side(port, client)
    return None if queues is None else queues[0]


def test_a_client_that_does_not_read_its_answers_holds_no_worker(web: Web) -> None:
    # One worker and one thread: answers used to be written by the event loop itself, each
    # send blocking up to the deadline. This client pipelines ~1 MB of requests and reads
    # nothing: its answers fill its small receive window and the server's send buffer.
    port = web(15.0, workers=1)  # the deadline outlasts the probes below by far
    bad = socket.socket()
    bad.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    bad.connect(("127.0.0.1", port))

    def flood() -> None:
        with contextlib.suppress(OSError):  # until the web closes it
            bad.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n" * 30000)

    threading.Thread(target=flood, daemon=True).start()

    def stalled() -> bool:
        # Answers pile up unsent until the send buffer is full: then the count stays put.
        before = unsent(port, bad)
        time.sleep(0.5)
        return bool(before) and unsent(port, bad) == before

    try:
        assert wait_until(stalled, 3 * GENEROUS_S)
        for _ in range(3):
            assert get(port, "/healthz") == 200
        assert server_side(port, bad) is not None  # answered while that client was there
        # Its answer unsent at the deadline, the web gives the connection up.
        assert wait_until(lambda: server_side(port, bad) is None, 3 * GENEROUS_S)
        assert get(port, "/healthz") == 200
    finally:
        bad.close()


def test_idle_connections_at_the_limit_make_room_for_new_ones(web: Web) -> None:
    # gthread stops accepting at worker_connections: idle connections kept everyone out.
    port = web(120.0, workers=1, GUNICORN_CMD_ARGS="--worker-connections 20")
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]
    try:
        assert wait_until(lambda: server_side(port, idle[-1]) is not None, GENEROUS_S)
        assert get(port, "/healthz") == 200
        # The oldest were closed for the newer: each new one past 20 took one's place.
        assert all(server_side(port, sock) is None for sock in idle[:10])
        assert all(server_side(port, sock) is not None for sock in idle[-10:])
    finally:
        for sock in idle:
            sock.close()


def test_the_bytes_a_worker_buffers_stay_under_its_cap(web: Web) -> None:
    # 600 kB of a 900 kB body held, under a cap of 1 MB: the next connection to send as much
    # is refused, and the first keeps its place.
    port = web(120.0, workers=1, WEB_BUFFER_BYTES=str(1_000_000))
    head = b"POST /webhooks/shopify HTTP/1.1\r\nHost: b\r\nContent-Length: 900000\r\n\r\n"
    first = socket.create_connection(("127.0.0.1", port), timeout=GENEROUS_S)
    second = socket.create_connection(("127.0.0.1", port), timeout=GENEROUS_S)

    def send(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the web may close it meanwhile
            sock.sendall(head + b"x" * 600_000)

    try:
        send(first)
        assert wait_until(lambda: server_side(port, first) == (0, 0), GENEROUS_S)  # all read
        threading.Thread(target=send, args=(second,), daemon=True).start()
        assert wait_until(lambda: server_side(port, second) is None, GENEROUS_S)
        answer = b""
        with contextlib.suppress(ConnectionResetError):  # if the refusal met unread bytes
            answer = read_until_closed(second)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503 "), answer
        assert get(port, "/healthz") == 200
        assert server_side(port, first) is not None
    finally:
        first.close()
        second.close()
