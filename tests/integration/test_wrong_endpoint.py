"""A wrong PIPELINES_URL is a misconfiguration, never a bad call: the shop's delivery pauses with
its calls kept, one loud error names PIPELINES_URL, and fixing the URL resumes delivery."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from bridge.config.settings import ConfigError, Settings, load_settings
from bridge.delivery.deadletters import DeadLetters
from bridge.delivery.deliver import deliver
from bridge.delivery.outbox import OutboxEntry
from bridge.services import Services
from bridge.store.facade import Keys
from tests.conftest import SHOP
from tests.pipelines_standin import PipelinesStandIn

K = Keys(SHOP)


class Website:
    """A loopback site that answers every POST with a 200 HTML page, as a marketing site or a
    login wall would."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                page = b"<!DOCTYPE html><html><body>Welcome</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def website() -> Iterator[Website]:
    site = Website()
    yield site
    site.close()


def queue_calls(rt: Services, n: int) -> None:
    calls = [
        {"type": "track", "messageId": f"M{i}", "event": "order_completed", "userId": "ann"}
        for i in range(n)
    ]
    rt.redis.rpush(
        K.outbox, *(OutboxEntry(orjson.dumps(c), 1, "ann", (), "batch").encode() for c in calls)
    )
    rt.redis.sadd("cb:shops", SHOP)


def runtime_at(settings: Settings, url: str) -> Services:
    return Services.build(settings.model_copy(update={"pipelines_url": url}))


def paused_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and "PIPELINES_URL" in r.getMessage()
    ]


@pytest.mark.parametrize("cause", ["a path that is not the API (404)", "an HTML page (200)"])
def test_a_wrong_pipelines_url_pauses_the_shop_and_keeps_every_call(
    settings: Settings,
    pipelines: PipelinesStandIn,
    website: Website,
    caplog: pytest.LogCaptureFixture,
    cause: str,
) -> None:
    # The stand-in answers 404 outside /v1/ (as the real host does for a wrong path).
    wrong = pipelines.url.removesuffix("/v1") + "/api/v1" if "404" in cause else website.url
    rt = runtime_at(settings, wrong)
    queue_calls(rt, 3)
    with caplog.at_level(logging.INFO):
        deliver(rt, SHOP)
        deliver(rt, SHOP)  # still wrong: paused, not counted or logged again
    assert rt.redis.get(K.paused) is not None
    assert rt.store.stats(SHOP)["delivery:paused"] == 1
    assert DeadLetters(rt.store).count(SHOP) == 0
    assert rt.redis.llen(K.outbox_work) + rt.redis.llen(K.outbox) == 3
    errors = paused_errors(caplog)
    assert len(errors) == 1 and wrong in errors[0], errors
    assert not [r for r in caplog.records if r.getMessage() == "batch delivered"]

    fixed = runtime_at(settings, pipelines.url)
    deliver(fixed, SHOP)  # a changed URL resumes at once, without waiting for a probe
    assert fixed.redis.get(K.paused) is None
    assert sorted(str(m) for m in pipelines.message_ids()) == ["M0", "M1", "M2"]


def test_the_pipelines_url_must_end_in_v1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINES_URL", "https://cdp.customer.io")
    with pytest.raises(ConfigError, match=r"PIPELINES_URL: .*ending in /v1"):
        load_settings()
    monkeypatch.setenv("PIPELINES_URL", "https://cdp.customer.io/v1/")
    assert load_settings().pipelines_url == "https://cdp.customer.io/v1"
