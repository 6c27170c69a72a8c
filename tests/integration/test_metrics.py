"""/metrics, volume alerts and `bridge check` against a real Redis, the Pipelines stand-in, real
RQ worker processes and a loopback HTTP server standing in for Slack."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis as redis_lib
from flask.testing import FlaskClient
from pydantic import SecretStr

from bridge.cli import main as cli
from bridge.config.settings import Settings
from bridge.delivery.deadletters import dlq_key
from bridge.delivery.deliver import deliver
from bridge.monitoring import monitor, volume
from bridge.services import Services
from bridge.store.facade import Keys, Store
from bridge.web.app import create_app
from bridge.worker.drain import drain
from tests.conftest import (
    SHOP,
    fixture_bytes,
    free_port,
    start_worker,
    wait_until,
    webhook_headers,
)
from tests.pipelines_standin import PipelinesStandIn

URL = "/webhooks/shopify"
NOW = 1_781_000_000.0  # a fixed clock for the alert tests (June 2026)
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def series(name: str, labels: str | None) -> str:
    """A series written `name{a="x",b="y"}`, its labels sorted: a label set has no order."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(LABEL.findall(labels))) + "}"


class Samples(dict[str, float]):
    """Scraped values by series, looked up with the labels in any order."""

    def __getitem__(self, key: str) -> float:
        return super().__getitem__(self._key(key))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(self._key(key))

    @staticmethod
    def _key(key: str) -> str:
        name, brace, labels = key.partition("{")
        return series(name, brace + labels)


def scrape(client: FlaskClient, **headers: str) -> dict[str, float]:
    resp = client.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.data
    assert resp.mimetype == "text/plain"
    out = Samples()
    for line in resp.get_data(as_text=True).splitlines():
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, line
        out[series(m.group(1), m.group(2))] = float(m.group(3))
    return out


def public(settings: Settings) -> FlaskClient:
    """The web app with /metrics open without a token, as `bridge dev` runs it."""
    return create_app(settings.model_copy(update={"metrics_public": True})).test_client()


def post(client: FlaskClient, topic: str, body: bytes, **kw: Any) -> int:
    return client.post(URL, data=body, headers=webhook_headers(body, topic, **kw)).status_code


class Slack:
    """A loopback incoming-webhook endpoint that records every JSON body posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers["Content-Length"])
                outer.bodies.append(json.loads(self.rfile.read(n)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T/B/secret"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def slack() -> Iterator[Slack]:
    s = Slack()
    yield s
    s.close()


def seed(
    redis: redis_lib.Redis,
    shop: str,
    event: str,
    now_s: float,
    per_hour: int,
    *,
    stopped_for_s: int = 0,
    from_s: float | None = None,
) -> None:
    """Steady traffic in the buckets the drain writes, for five weeks (or since `from_s`),
    silent for the last `stopped_for_s` seconds."""
    stop = now_s - stopped_for_s
    pipe = redis.pipeline()
    redis.sadd("cb:shops", shop)
    per_fine = per_hour // 12
    last = None
    first = now_s - 35 * 86400 if from_s is None else from_s
    for b in range(int(first) // 300 * 300, int(now_s), 300):
        if b + 300 > stop:
            break
        if b >= now_s - volume.FINE_KEEP_S:
            pipe.hincrby(volume.fine_key(shop, event), str(b), per_fine)
        pipe.hincrby(volume.coarse_key(shop, event), str(b // 3600 * 3600), per_fine)
        last = b + 299
    if last is not None:
        pipe.hset(volume.last_seen_key(shop), event, int(last * 1000))
    pipe.execute()


# --- /metrics ---------------------------------------------------------------------------------


def test_metrics_cover_web_and_worker_counters_whichever_process_answers(
    settings: Settings,
    redis: redis_lib.Redis,
    pipelines: PipelinesStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    web_a = public(settings)
    web_b = public(settings)  # another gunicorn worker: no shared memory
    caplog.set_level(logging.INFO)
    body = fixture_bytes("carts-create")
    assert post(web_a, "carts/create", body, webhook_id="w1") == 200
    assert post(web_b, "carts/create", body, webhook_id="w1") == 200  # a redelivery, queued
    assert post(web_a, "collections/update", b"{}") == 200  # ignored topic
    rt = Services.build(settings)
    drain(rt, SHOP)
    deliver(rt, SHOP)
    assert pipelines.wait_for(1)
    rt.store.flush_counters(force=True)  # as a worker's ticker does within a second
    # Each web process writes its `accepted` counts within a second, unasked.
    stats = Keys(SHOP).stats
    assert wait_until(lambda: redis.hget(stats, "webhooks:carts/create:accepted") == b"2")

    a, b = scrape(web_a), scrape(web_b)
    assert a == b
    s = f'shop="{SHOP}"'
    # Both deliveries were queued by the web; the drain processed one and skipped the other.
    assert a[f'cartbridge_webhooks_total{{{s},topic="carts/create",result="accepted"}}'] == 2
    assert a[f'cartbridge_webhooks_total{{{s},topic="carts/create",result="duplicate"}}'] == 1
    assert a[f'cartbridge_webhooks_total{{{s},topic="collections/update",result="ignored"}}'] == 1
    assert a[f'cartbridge_webhooks_total{{{s},topic="carts/create",result="processed"}}'] == 1
    assert a[f'cartbridge_events_total{{{s},event="added_to_cart",outcome="queued"}}'] == 1
    assert a[f'cartbridge_events_total{{{s},event="added_to_cart",outcome="delivered"}}'] == 1
    assert a[f'cartbridge_calls_total{{{s},outcome="delivered"}}'] == 1
    assert a[f"cartbridge_delivery_latency_seconds_count{{{s}}}"] == 1
    assert a[f'cartbridge_delivery_latency_seconds_bucket{{{s},le="+Inf"}}'] == 1
    assert a[f'cartbridge_delivery_latency_seconds_bucket{{{s},le="60"}}'] == 1
    assert a[f'cartbridge_queue_depth{{{s},queue="inbound"}}'] == 0
    assert a[f'cartbridge_queue_depth{{{s},queue="outbox"}}'] == 0
    assert a[f"cartbridge_dead_letters{{{s}}}"] == 0
    assert a[f"cartbridge_delivery_paused{{{s}}}"] == 0
    seen = a[f'cartbridge_event_last_seen_timestamp_seconds{{{s},event="added_to_cart"}}']
    assert abs(seen - redis.time()[0]) < 600
    assert a[f'cartbridge_volume_alert{{{s},event="added_to_cart",kind="drop"}}'] == 0
    assert a["cartbridge_shops"] == 1

    # One structured line per webhook and per delivery batch, with the ids to correlate.
    hook = next(r for r in caplog.records if r.getMessage() == "webhook")
    assert (hook.shop, hook.topic, hook.webhook_id) == (SHOP, "carts/create", "w1")  # type: ignore[attr-defined]
    assert hook.request_id  # type: ignore[attr-defined]
    batch = next(r for r in caplog.records if r.getMessage() == "batch delivered")
    assert (batch.shop, batch.delivered) == (SHOP, 1)  # type: ignore[attr-defined]


def test_counters_added_by_others_show_up_by_pattern(
    settings: Settings, redis: redis_lib.Redis
) -> None:
    stats = Keys(SHOP).stats
    redis.sadd("cb:shops", SHOP)
    redis.hincrby(stats, "webhooks:orders/paid:bad_signature", 3)
    redis.hincrby(stats, "webhooks:carts/update:stale", 2)
    redis.hincrby(stats, "events:order_completed:dead_lettered", 1)
    redis.hincrby(stats, "identity:suppressed", 4)
    redis.hincrby(stats, "identity:guest:held", 5)
    redis.hset(dlq_key(SHOP), mapping={"c-1": b"x", "c-2": b"y"})
    redis.set(Keys(SHOP).prefix + "paused", 1)
    redis.rpush(Keys(SHOP).outbox, b"a")
    m = scrape(public(settings))
    s = f'shop="{SHOP}"'
    assert m[f'cartbridge_webhooks_total{{{s},topic="orders/paid",result="bad_signature"}}'] == 3
    assert m[f'cartbridge_webhooks_total{{{s},topic="carts/update",result="stale"}}'] == 2
    assert m[f'cartbridge_events_total{{{s},event="order_completed",outcome="dead_lettered"}}'] == 1
    assert m[f'cartbridge_identity_total{{{s},outcome="suppressed"}}'] == 4
    assert m[f'cartbridge_identity_total{{{s},name="guest",outcome="held"}}'] == 5
    assert m[f"cartbridge_dead_letters{{{s}}}"] == 2
    assert m[f"cartbridge_delivery_paused{{{s}}}"] == 1
    assert m[f'cartbridge_queue_depth{{{s},queue="outbox"}}'] == 1


def test_each_family_is_typed_once_under_its_exposed_name(
    settings: Settings, redis: redis_lib.Redis
) -> None:
    stats = Keys(SHOP).stats
    redis.sadd("cb:shops", SHOP, "b.myshopify.com")
    redis.hset(stats, mapping={"calls:delivered": 1, "latency_le_60000": 1, "latency_count": 1})
    redis.hset("cb:rejected", "webhooks:unknown:rejected", 2)
    body = public(settings).get("/metrics").get_data(as_text=True)
    types = [line.split()[2:] for line in body.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len({name for name, _ in types})
    assert ["cartbridge_webhooks_total", "counter"] in types
    assert ["cartbridge_calls_total", "counter"] in types
    assert ["cartbridge_delivery_latency_seconds", "histogram"] in types
    assert ["cartbridge_queue_depth", "gauge"] in types
    assert ["cartbridge_shops", "gauge"] in types
    assert "# HELP cartbridge_events_total" not in body  # no family without samples
    m = scrape(public(settings))
    assert m['cartbridge_webhooks_total{shop="other",topic="unknown",result="rejected"}'] == 2
    assert m[f'cartbridge_delivery_latency_seconds_sum{{shop="{SHOP}"}}'] == 0


def test_metrics_token(settings: Settings, redis: redis_lib.Redis) -> None:
    client = create_app(
        settings.model_copy(update={"metrics_token": SecretStr("scrape-me")})
    ).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    scrape(client, Authorization="Bearer scrape-me")
    # METRICS_PUBLIC does not open metrics that have a token.
    both = settings.model_copy(
        update={"metrics_token": SecretStr("scrape-me"), "metrics_public": True}
    )
    assert create_app(both).test_client().get("/metrics").status_code == 401


def test_metrics_are_closed_without_a_token_unless_made_public(
    settings: Settings, redis: redis_lib.Redis
) -> None:
    redis.sadd("cb:shops", SHOP)
    closed = create_app(settings).test_client().get("/metrics")
    assert closed.status_code == 401
    assert SHOP.encode() not in closed.data
    assert f'cartbridge_queue_depth{{shop="{SHOP}",queue="inbound"}}' in scrape(public(settings))


@pytest.mark.parametrize(
    "authorization",
    ["Bearer t\u00f6ken", "Bearer \u20ac\u20ac\u20ac", "Bearer \udcff", "bearer \u00ff" * 50],
)
def test_a_non_ascii_bearer_is_refused_not_a_500(
    settings: Settings, redis: redis_lib.Redis, authorization: str
) -> None:
    client = create_app(
        settings.model_copy(update={"metrics_token": SecretStr("scrape-me")})
    ).test_client()
    resp = client.get("/metrics", headers={"Authorization": authorization})
    assert resp.status_code == 401


def test_a_non_ascii_token_matches_the_bytes_sent(
    settings: Settings, redis: redis_lib.Redis
) -> None:
    # A client sends the token's UTF-8 bytes; WSGI hands them over decoded as latin-1.
    token = "sch\u00fcssel-\u20ac"
    app = create_app(settings.model_copy(update={"metrics_token": SecretStr(token)}))
    client = app.test_client()
    scrape(client, Authorization="Bearer " + token.encode().decode("latin-1"))
    prefix = "Bearer " + token[:-1].encode().decode("latin-1")
    assert client.get("/metrics", headers={"Authorization": prefix}).status_code == 401


def test_redis_down_fails_metrics_and_readyz_but_not_healthz(settings: Settings) -> None:
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    client = public(down)
    assert client.get("/metrics").status_code == 503
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


# --- alerts -----------------------------------------------------------------------------------


def test_a_drop_alerts_once_shows_as_a_metric_and_resolves(
    settings: Settings, redis: redis_lib.Redis, slack: Slack
) -> None:
    s = settings.model_copy(update={"alert_webhook_url": SecretStr(slack.url)})
    seed(redis, SHOP, "order_completed", NOW, per_hour=240, stopped_for_s=3600)
    seed(redis, SHOP, "added_to_cart", NOW, per_hour=600)

    results = monitor.check(Store(redis), s, now_s=NOW)
    firing = {(r.verdict.event, a) for r in results for a in r.verdict.alerts}
    assert firing == {("order_completed", "drop"), ("order_completed", "silence")}
    assert len(slack.bodies) == 2
    assert all("order_completed" in b["text"] and SHOP in b["text"] for b in slack.bodies)

    # Five minutes later it still fires: no second message (the repeat is hours away).
    monitor.check(Store(redis), s, now_s=NOW + 300)
    assert len(slack.bodies) == 2
    m = scrape(public(s))
    key = f'cartbridge_volume_alert{{shop="{SHOP}",event="order_completed",kind="drop"}}'
    assert m[key] == 1
    assert m["cartbridge_volume_check_last_run_timestamp_seconds"] == NOW + 300

    # Orders come back: one "resolved" message per alert, metric back to 0.
    seed(redis, SHOP, "order_completed", NOW + 4200, per_hour=240, from_s=NOW - 3600)
    seed(redis, SHOP, "added_to_cart", NOW + 4200, per_hour=600, from_s=NOW)
    monitor.check(Store(redis), s, now_s=NOW + 4200)
    assert len(slack.bodies) == 4
    assert all("RESOLVED" in b["text"] for b in slack.bodies[2:])
    assert scrape(public(s))[key] == 0


def test_a_held_lock_means_another_check_is_alerting(
    settings: Settings, redis: redis_lib.Redis
) -> None:
    redis.set(monitor.LOCK_KEY, "someone-else")
    with pytest.raises(monitor.CheckBusy):
        monitor.check(Store(redis), settings, now_s=NOW)


def test_old_buckets_are_trimmed(settings: Settings, redis: redis_lib.Redis) -> None:
    seed(redis, SHOP, "order_completed", NOW, per_hour=120)
    fine = volume.fine_key(SHOP, "order_completed")
    coarse = volume.coarse_key(SHOP, "order_completed")
    monitor.check(Store(redis), settings, now_s=NOW + 3 * 86400)
    assert redis.hlen(fine) == 0  # all older than 26 h by then
    oldest = min(int(f) for f in redis.hkeys(coarse))
    assert oldest >= NOW + 3 * 86400 - volume.COARSE_KEEP_S


def test_bridge_check_exit_code(
    settings: Settings,
    redis: redis_lib.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    now = float(redis.time()[0])
    seed(redis, SHOP, "added_to_cart", now, per_hour=600)
    assert cli.main(["check"]) == 0
    assert "ok" in capsys.readouterr().out
    seed(redis, "dead.myshopify.com", "checkout_started", now, per_hour=600, stopped_for_s=5400)
    assert cli.main(["check", "--json"]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    bad = [r for r in rows if r["alerts"]]
    assert [(r["shop"], r["event"]) for r in bad] == [("dead.myshopify.com", "checkout_started")]
    assert cli.main(["check", "--shop", SHOP]) == 0
    assert redis.hlen(monitor.alerts_key("dead.myshopify.com")) == 0  # read-only by default
    assert cli.main(["check", "--notify"]) == 1
    assert redis.hlen(monitor.alerts_key("dead.myshopify.com")) == 2
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert cli.main(["check"]) == 2


def test_two_workers_alert_once(settings: Settings, redis: redis_lib.Redis, slack: Slack) -> None:
    now = float(redis.time()[0])
    seed(redis, SHOP, "order_completed", now, per_hour=240, stopped_for_s=5400)
    env = {"ALERT_WEBHOOK_URL": slack.url, "VOLUME_CHECK_EVERY_S": "30", "LOG_LEVEL": "ERROR"}
    workers: list[subprocess.Popen[bytes]] = [start_worker(settings, **env) for _ in range(2)]
    try:
        assert wait_until(lambda: len(slack.bodies) >= 2, 30), slack.bodies
        assert not wait_until(lambda: len(slack.bodies) > 2, 3)
        kinds = sorted(b["attachments"][0]["fields"][2]["value"] for b in slack.bodies)
        assert kinds == ["drop", "silence"]
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(40)


def test_a_cancel_spike_alerts_and_shows_as_a_metric(
    settings: Settings, redis: redis_lib.Redis, slack: Slack
) -> None:
    s = settings.model_copy(update={"alert_webhook_url": SecretStr(slack.url)})
    seed(redis, SHOP, "subscription_canceled", NOW - 3600, per_hour=24)
    seed(redis, SHOP, "subscription_canceled", NOW, per_hour=240, from_s=NOW - 3600)
    seed(redis, SHOP, "payment_failed", NOW, per_hour=24)
    results = monitor.check(Store(redis), s, now_s=NOW)
    firing = {(r.verdict.event, a) for r in results for a in r.verdict.alerts}
    assert firing == {("subscription_canceled", "spike")}
    [body] = slack.bodies
    assert "subscription_canceled spiked" in body["text"]
    m = scrape(public(s))
    spike = f'cartbridge_volume_alert{{shop="{SHOP}",event="subscription_canceled",kind="spike"}}'
    assert m[spike] == 1
    assert m[f'cartbridge_volume_alert{{shop="{SHOP}",event="payment_failed",kind="spike"}}'] == 0
    # A rise-watched event has no drop alert series, and a key event no spike series.
    assert not any('event="payment_failed",kind="drop"' in k for k in m)
    assert not any('event="order_completed",kind="spike"' in k for k in m)


def test_the_latency_histogram_adds_per_bucket_counts_to_older_cumulative_ones(
    settings: Settings, redis: redis_lib.Redis
) -> None:
    """Delivery counts a latency once, in its own bucket (`latency_in_<ms>`); counters written
    before that change are cumulative (`latency_le_<ms>`). /metrics serves one cumulative
    histogram from both, so an upgrade neither loses nor double-counts a delivery."""
    stats = Keys(SHOP).stats
    redis.sadd("cb:shops", SHOP)
    redis.hset(
        stats,
        mapping={
            # before: one delivery at 80 ms, counted under every bound from 100 ms up
            **{f"latency_le_{b}": 1 for b in (100, 250, 500, 1000, 2500, 5000, 10000, 60000)},
            # after: one at 30 ms, two at 700 ms, one over a minute (only in the count)
            "latency_in_50": 1,
            "latency_in_1000": 2,
            "latency_count": 5,
            "latency_ms_sum": 80 + 30 + 1400 + 70000,
        },
    )
    m = scrape(public(settings))
    s = f'shop="{SHOP}"'
    expected = {"0.05": 1, "0.1": 2, "0.25": 2, "0.5": 2, "1": 4, "2.5": 4, "60": 4, "+Inf": 5}
    for le, n in expected.items():
        assert m[f'cartbridge_delivery_latency_seconds_bucket{{{s},le="{le}"}}'] == n, le
    assert m[f"cartbridge_delivery_latency_seconds_count{{{s}}}"] == 5
