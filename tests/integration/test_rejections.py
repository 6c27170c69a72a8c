"""Rejected webhooks: one answer whatever the reason, every one counted and exported in bounded
series, and a flood of them written to the logs as a handful of lines (real app, real Redis)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import redis as redis_lib
from flask.testing import FlaskClient
from pydantic import SecretStr

from bridge import signature
from bridge.config.settings import Settings
from bridge.logs import Sampler
from bridge.web.app import create_app
from tests.conftest import ROOT, SHOP, fixture_bytes, webhook_headers

URL = "/webhooks/shopify"
SHOP_A = "brand-a.myshopify.com"
A_SECRET = "a-secret"
SAMPLE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def stores_file(tmp_path: Path) -> str:
    path = tmp_path / "stores.toml"
    path.write_text(
        f'[stores."{SHOP_A}"]\nwebhook_secret = "{A_SECRET}"\npipelines_write_key = "key-a"\n'
    )
    return str(path)


@pytest.fixture
def file_only(settings: Settings, tmp_path: Path) -> Settings:
    """One store from a file and no default store: every other shop is unknown."""
    return settings.model_copy(
        update={
            "shopify_webhook_secret": SecretStr(""),
            "bridge_stores_file": stores_file(tmp_path),
            "identity_hash_key": SecretStr("k"),
        }
    )


def series(client: FlaskClient, metric: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of one metric, keyed by its label set."""
    resp = client.get("/metrics")
    assert resp.status_code == 200
    out = {}
    for line in resp.get_data(as_text=True).splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == metric:
            out[frozenset(LABEL.findall(m.group(2)))] = float(m.group(3))
    return out


def public(settings: Settings, **update: object) -> FlaskClient:
    return create_app(settings.model_copy(update={"metrics_public": True, **update})).test_client()


def post(client: FlaskClient, body: bytes, **kw: str) -> tuple[int, bytes]:
    resp = client.post(URL, data=body, headers=webhook_headers(body, "carts/create", **kw))
    return resp.status_code, resp.data


# --- no shop enumeration --------------------------------------------------------------------


def test_an_unknown_shop_and_a_wrong_signature_get_the_same_answer(file_only: Settings) -> None:
    client = create_app(file_only).test_client()
    body = fixture_bytes("carts-create")
    unknown = post(client, body, shop="nobody.myshopify.com", secret=A_SECRET)
    wrong = post(client, body, shop=SHOP_A, secret="not-the-secret")
    assert unknown == wrong
    assert unknown[0] == 401
    unsigned = webhook_headers(body, "carts/create", shop="nobody.myshopify.com")
    del unsigned["X-Shopify-Hmac-Sha256"]
    resp = client.post(URL, data=body, headers=unsigned)
    assert (resp.status_code, resp.data) == unknown
    assert post(client, body, shop=SHOP_A, secret=A_SECRET)[0] == 200  # the check can pass


def test_an_unknown_shop_costs_an_hmac_too(
    file_only: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[int] = []
    real = signature.verify

    def verify(body: bytes, header: str | None, keys: list[bytes]) -> bool:
        checked.append(len(keys))
        return real(body, header, keys)

    monkeypatch.setattr(signature, "verify", verify)
    client = create_app(file_only).test_client()
    body = fixture_bytes("carts-create")
    assert post(client, body, shop="nobody.myshopify.com", secret=A_SECRET)[0] == 401
    assert checked == [1]  # verified against a key, which matched nothing


# --- rejections in /metrics -----------------------------------------------------------------


def test_bad_signatures_of_default_store_shops_are_exported_per_known_shop(
    settings: Settings, redis: redis_lib.Redis
) -> None:
    client = public(settings)
    body = fixture_bytes("carts-create")
    assert post(client, body)[0] == 200  # SHOP is served by the default store, and now known
    for _ in range(3):  # the secret was rotated in Shopify, not here
        assert post(client, body, secret="rotated-secret")[0] == 401
    for i in range(40):  # unsigned requests naming made-up shops
        assert post(client, body, shop=f"made-up-{i}.myshopify.com", secret="x")[0] == 401
    webhooks = series(client, "cartbridge_webhooks_total")
    mine = {"shop": SHOP, "topic": "carts/create", "result": "bad_signature"}
    assert webhooks[frozenset(mine.items())] == 3
    other = {"shop": "other", "topic": "carts/create", "result": "bad_signature"}
    assert webhooks[frozenset(other.items())] == 40
    shops = {dict(labels)["shop"] for labels in webhooks}
    assert shops == {SHOP, "other"}  # made-up names create no series


def test_a_configured_shop_never_seen_is_exported_with_its_rejections(
    file_only: Settings, redis: redis_lib.Redis
) -> None:
    client = public(file_only)
    body = fixture_bytes("carts-create")
    assert post(client, body, shop=SHOP_A, secret="old-secret")[0] == 401
    assert post(client, body, shop="nobody.myshopify.com")[0] == 401
    webhooks = series(client, "cartbridge_webhooks_total")
    mine = {"shop": SHOP_A, "topic": "carts/create", "result": "bad_signature"}
    assert webhooks[frozenset(mine.items())] == 1
    other = {"shop": "other", "topic": "carts/create", "result": "unknown_shop"}
    assert webhooks[frozenset(other.items())] == 1


def test_malformed_and_oversized_requests_are_counted_under_other(
    settings: Settings, redis: redis_lib.Redis
) -> None:
    client = public(settings, max_body_bytes=100)
    body = b'{"a": 1}'
    headers = webhook_headers(body, "carts/create")
    del headers["X-Shopify-Webhook-Id"]
    assert client.post(URL, data=body, headers=headers).status_code == 400
    big = b'{"a": "' + b"x" * 200 + b'"}'
    resp = client.post(URL, data=big, headers=webhook_headers(big, "carts/create"))
    assert resp.status_code == 413
    webhooks = series(client, "cartbridge_webhooks_total")
    for result in ("malformed", "too_large"):
        labels = {"shop": "other", "topic": "carts/create", "result": result}
        assert webhooks[frozenset(labels.items())] == 1


def alert_selectors(name: str) -> list[tuple[str, dict[str, str]]]:
    """The metric selectors of one rule in deploy/prometheus-alerts.yml (metric, matchers)."""
    text = (ROOT / "deploy" / "prometheus-alerts.yml").read_text()
    rule = text.split(f"alert: {name}\n", 1)[1].split("- alert:", 1)[0]
    expr = rule.split("expr:", 1)[1].split("\n        for:", 1)[0]
    return [
        (metric, dict(LABEL.findall(matchers)))
        for metric, matchers in re.findall(r"(cartbridge_\w+)\{([^}]*)\}", expr)
    ]


def test_the_bad_signature_alert_selects_the_exported_series(
    settings: Settings, redis: redis_lib.Redis
) -> None:
    client = public(settings)
    body = fixture_bytes("carts-create")
    post(client, body)
    post(client, body, secret="rotated-secret")
    [(metric, matchers)] = alert_selectors("CartbridgeBadSignatures")
    selected = [
        labels
        for labels, value in series(client, metric).items()
        if value > 0 and set(matchers.items()) <= labels
    ]
    assert frozenset({("shop", SHOP), ("topic", "carts/create"), *matchers.items()}) in selected


# --- a flood of unsigned requests -----------------------------------------------------------


def test_a_thousand_rejections_are_a_few_log_lines_and_a_full_count(
    settings: Settings, redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    client = public(settings, rejected_log_every_s=3600.0)
    body = fixture_bytes("carts-create")
    assert post(client, body)[0] == 200
    caplog.set_level(logging.WARNING, logger="bridge.web.webhooks")
    for i in range(500):
        post(client, body, secret="forged")
        post(client, body, shop=f"made-up-{i}.myshopify.com", secret="forged")
    lines = [r for r in caplog.records if r.name == "bridge.web.webhooks"]
    assert len(lines) == 1  # one reason (bad signature), one line in the hour
    assert lines[0].left_out == 0  # type: ignore[attr-defined]
    webhooks = series(client, "cartbridge_webhooks_total")
    counted = sum(
        value for labels, value in webhooks.items() if ("result", "bad_signature") in labels
    )
    assert counted == 1000


def test_the_line_after_a_quiet_spell_says_how_many_were_left_out() -> None:
    now = [0.0]
    sampler = Sampler(10.0, clock=lambda: now[0])
    assert sampler.admit("bad_signature") == 0
    assert [sampler.admit("bad_signature") for _ in range(99)] == [None] * 99
    assert sampler.admit("unknown_shop") == 0  # each reason has its own allowance
    now[0] = 10.0
    assert sampler.admit("bad_signature") == 99
    assert sampler.admit("bad_signature") is None
    every = Sampler(0.0)
    assert [every.admit("x") for _ in range(3)] == [0, 0, 0]
