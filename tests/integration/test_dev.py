"""`bridge dev` as a newcomer meets it: a real process with its own Redis, gunicorn and worker,
found from another terminal, on loopback only, and stopped by Ctrl-C without a trace."""

from __future__ import annotations

import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import redis as redis_lib

from tests.conftest import ROOT, RedisServer, free_port, wait_until

BRIDGE = [sys.executable, "-m", "bridge.cli"]


@dataclass
class Dev:
    proc: subprocess.Popen[bytes]
    port: int
    cwd: Path
    tmp: Path
    log: Path  # stderr (and stdout, unless piped)
    mark: str
    env: dict[str, str]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def cli(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """A bridge command from another terminal: same directory, REDIS_URL and PORT unset."""
        env = {k: v for k, v in self.env.items() if k not in ("REDIS_URL", "PORT")}
        return subprocess.run(
            [*BRIDGE, *args],
            env=env,
            cwd=cwd or self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def ctrl_c(self) -> int:
        """What a terminal does on Ctrl-C: SIGINT to the whole foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(60)


def marked_processes(mark: str) -> list[int]:
    """Processes (any depth below `bridge dev`) whose environment carries `mark`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if mark.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def listeners(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net shows them) listening on `port`."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, _, hex_port = fields[1].partition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                out.append(addr)
    return out


def start_dev(tmp_path: Path, stdout: int | IO[bytes]) -> Dev:
    cwd = tmp_path / "shop-app"
    cwd.mkdir()
    # gunicorn reads ./gunicorn.conf.py: the Procfile's, whose bind is 0.0.0.0:$PORT.
    shutil.copy(ROOT / "gunicorn.conf.py", cwd / "gunicorn.conf.py")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    mark = uuid.uuid4().hex
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIPELINES_", "SHOPIFY_", "REDIS_", "PORT", "DRY_RUN"))
    }
    env.update(
        TMPDIR=str(tmp),
        PYTHONPATH=str(ROOT),
        CARTBRIDGE_TEST_MARK=mark,
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    )
    port = free_port()
    log = tmp_path / "dev.log"
    err = log.open("ab")
    proc = subprocess.Popen(
        [*BRIDGE, "dev", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=err if stdout == subprocess.STDOUT else stdout,
        stderr=err,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    dev = Dev(proc, port, cwd, tmp, log, mark, env)
    assert wait_until(
        lambda: (cwd / ".cartbridge" / "dev.env").is_file() or proc.poll() is not None, 60
    )
    assert proc.poll() is None, dev.output()
    return dev


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    running = start_dev(tmp_path, subprocess.STDOUT)
    yield running
    if running.proc.poll() is None:
        running.ctrl_c()


def assert_stopped_cleanly(dev: Dev, code: int, output: str) -> None:
    assert code == 0, output
    assert "Traceback" not in output and "Exception ignored" not in output, output
    # Redis stopped last: nothing met a vanished Redis on its way out.
    assert "could not connect to Redis" not in output and "Redis unavailable" not in output
    assert "did not stop in time" not in output, output  # nothing needed a SIGKILL
    assert marked_processes(dev.mark) == []
    assert list(dev.tmp.iterdir()) == []  # no temporary directory left behind
    assert not (dev.cwd / ".cartbridge").exists()


def test_a_newcomers_session_from_start_to_ctrl_c(dev: Dev) -> None:
    # Loopback only, although ./gunicorn.conf.py says 0.0.0.0.
    assert listeners(dev.port) and set(listeners(dev.port)) <= {"0100007F"}

    # Another terminal, in a subdirectory, with REDIS_URL and PORT unset, finds the stack.
    sub = dev.cwd / "src"
    sub.mkdir()
    sent = dev.cli("send-sample", "checkouts/update", cwd=sub)
    assert sent.returncode == 0 and sent.stdout.startswith("200"), sent
    assert wait_until(lambda: "[dry-run]" in dev.output(), 30), dev.output()
    check = dev.cli("check", cwd=sub)
    assert "cartbridge-dev.myshopify.com" in check.stdout, check
    assert check.returncode == 0, check

    # The web's "accepted" line reaches the terminal before the call it produced.
    out = dev.output()
    assert '"result":"accepted"' in out
    assert out.index('"result":"accepted"') < out.index("[dry-run]"), out
    # The worker says once what it is; httpx's request lines are off.
    assert out.count("cartbridge worker") == 1 and "HTTP Request" not in out

    # The ops console is on, and the token printed opens it (as an admin).
    found = re.search(r"ops console: (http://127\.0\.0\.1:\d+/ops/) \(token: ([\w-]+)\)", out)
    assert found, out
    jar = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    form = urllib.parse.urlencode({"token": found.group(2)}).encode()
    with jar.open(found.group(1) + "login", data=form, timeout=10) as resp:
        page = resp.read().decode()
    assert "cartbridge-dev.myshopify.com" in page and "signed in as admin" in page, page

    assert_stopped_cleanly(dev, dev.ctrl_c(), dev.output())


def test_ctrl_c_with_the_output_piped_into_a_reader_that_dies(tmp_path: Path) -> None:
    dev = start_dev(tmp_path, subprocess.PIPE)
    assert dev.proc.stdout is not None
    # `bridge dev | tee log`: Ctrl-C stops tee too; then nobody reads bridge dev's stdout.
    dev.proc.stdout.close()
    sent = dev.cli("send-sample", "carts/create")
    assert sent.returncode == 0, sent
    # The call still reaches the dry-run file, and delivery does not fail on the lost stdout.
    calls = dev.cwd / "dry-run.jsonl"
    assert wait_until(lambda: calls.is_file() and b"added_to_cart" in calls.read_bytes(), 30)
    code = dev.ctrl_c()
    assert "delivery failed" not in dev.output(), dev.output()
    assert_stopped_cleanly(dev, code, dev.output())


def test_commands_say_which_redis_they_read_when_it_holds_no_cartbridge_data(
    tmp_path: Path, redis_url_of_an_empty_redis: str
) -> None:
    env = dict(os.environ, REDIS_URL=redis_url_of_an_empty_redis, PYTHONPATH=str(ROOT))
    for args in (["check"], ["dlq", "list"], ["gdpr", "export"]):
        proc = subprocess.run(
            [*BRIDGE, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 1, proc
        assert redis_url_of_an_empty_redis in proc.stderr and "REDIS_URL" in proc.stderr, proc


@pytest.fixture
def redis_url_of_an_empty_redis(redis: redis_lib.Redis, redis_server: RedisServer) -> str:
    return redis_server.url  # `redis` flushed it


def test_the_procfile_web_binds_every_interface_on_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "5123")
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert conf["bind"] == "0.0.0.0:5123"
    assert "-c gunicorn.conf.py" in (ROOT / "Procfile").read_text()
