"""Each configured store is delivered into its own workspace (write key), in its currency."""

from __future__ import annotations

from pathlib import Path

import redis as redis_lib

from bridge.config.settings import Settings
from bridge.delivery.deliver import deliver
from bridge.services import Services
from bridge.web.app import create_app
from bridge.worker.drain import drain, process_config
from tests.conftest import SHOP, WRITE_KEY, fixture_bytes, webhook_headers
from tests.pipelines_standin import PipelinesStandIn

SHOP_A = "brand-a.myshopify.com"


def test_calls_go_out_under_the_shops_write_key_and_currency(
    settings: Settings, pipelines: PipelinesStandIn, redis: redis_lib.Redis, tmp_path: Path
) -> None:
    pipelines.configure(write_keys={WRITE_KEY, "key-a"})
    stores = tmp_path / "stores.toml"
    stores.write_text(
        f'[stores."{SHOP_A}"]\nwebhook_secret = "secret-a"\n'
        f'pipelines_write_key = "key-a"\npipelines_url = "{pipelines.url}"\ncurrency = "EUR"\n'
    )
    s = settings.model_copy(update={"bridge_stores_file": str(stores)})
    client = create_app(s).test_client()
    body = fixture_bytes("carts-create")
    for shop, secret in ((SHOP_A, "secret-a"), (SHOP, "test-webhook-secret")):
        headers = webhook_headers(body, "carts/create", shop=shop, secret=secret)
        assert client.post("/webhooks/shopify", data=body, headers=headers).json == {"ok": True}
    rt = Services.build(s)
    assert rt.sink_for(SHOP_A) is rt.sink_for(SHOP_A) is not rt.sink
    assert rt.sink_for(SHOP) is rt.sink
    for shop in (SHOP_A, SHOP):
        drain(rt, shop)
        deliver(rt, shop)
    by_key = {r.write_key: r.call for r in pipelines.records}
    assert set(by_key) == {"key-a", WRITE_KEY}
    assert by_key["key-a"]["event"] == by_key[WRITE_KEY]["event"] == "added_to_cart"
    # Payloads without a currency take the shop's.
    assert process_config(rt, SHOP_A).shop_currency == "EUR"
    assert process_config(rt, SHOP).shop_currency == "USD"
