"""The stores file: per-shop secrets, write keys, regions, locale; the env default store."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from bridge import identity
from bridge.config.settings import EU_PIPELINES_URL, US_PIPELINES_URL, ConfigError, Settings
from bridge.config.stores import load_stores, require_service_config, stores_for

GOOD = """
[stores."Brand-A.myshopify.com"]
webhook_secrets = ["new", "old"]
admin_webhook_key = "admin-key"
pipelines_write_key = "key-a"
pipelines_region = "eu"
time_zone = "Europe/Berlin"
currency = "eur"

[stores."brand-b.myshopify.com"]
pipelines_url = "http://127.0.0.1:9/v1/"
"""
ONLY_A = GOOD.split('[stores."brand-b')[0]


def settings_with(tmp_path: Path, text: str, **kw: object) -> Settings:
    path = tmp_path / "stores.toml"
    path.write_text(text)
    return Settings(bridge_stores_file=str(path), **kw)  # type: ignore[arg-type]


def test_file_entries_and_their_fallbacks(tmp_path: Path) -> None:
    s = settings_with(
        tmp_path, GOOD, shopify_webhook_secret="env-1, env-2", pipelines_write_key="env-key"
    )
    reg = load_stores(s)
    a = reg.get("brand-a.myshopify.com")
    assert a is not None and not a.is_default
    assert a.signing_keys() == [b"new", b"old", b"admin-key"]
    assert a.pipelines_write_key.get_secret_value() == "key-a"
    assert (a.pipelines_url, a.time_zone, a.currency, a.sends) == (
        EU_PIPELINES_URL,
        "Europe/Berlin",
        "EUR",
        True,
    )
    b = reg.get("BRAND-B.myshopify.com ")
    assert b is not None
    assert b.signing_keys() == [b"env-1", b"env-2"]  # omitted: the environment's
    assert b.pipelines_write_key.get_secret_value() == "env-key"
    assert (b.pipelines_url, b.currency, b.time_zone) == ("http://127.0.0.1:9/v1", "USD", "UTC")
    # Any other shop falls to the default store built from the environment.
    other = reg.get("else.myshopify.com")
    assert other is not None and other.is_default and other.pipelines_url == US_PIPELINES_URL
    assert reg.configured("brand-a.myshopify.com") and not reg.configured("else.myshopify.com")
    assert "admin-key" not in repr(a) and "key-a" not in repr(a)


def test_without_an_env_secret_unlisted_shops_are_unknown(tmp_path: Path) -> None:
    reg = load_stores(settings_with(tmp_path, ONLY_A, pipelines_write_key="k"))
    assert reg.get("else.myshopify.com") is None
    assert reg.get("brand-a.myshopify.com") is not None


def test_single_store_environment_alone_still_works() -> None:
    reg = load_stores(Settings(shopify_webhook_secret="s", pipelines_write_key="k"))
    store = reg.get("any.myshopify.com")
    assert store is not None and store.signing_keys() == [b"s"] and store.sends
    assert load_stores(Settings()).get("any.myshopify.com") is None


def test_recharge_secrets_come_from_each_stores_table_and_never_from_the_environment(
    tmp_path: Path,
) -> None:
    text = GOOD.replace('currency = "eur"', 'currency = "eur"\nrecharge_client_secret = " rc-a "')
    s = settings_with(
        tmp_path,
        text,
        shopify_webhook_secret="env",
        recharge_client_secret="rc-env",
        pipelines_write_key="k",
    )
    reg = load_stores(s)
    a, b = reg.get("brand-a.myshopify.com"), reg.get("brand-b.myshopify.com")
    assert a is not None and a.recharge_key() == b"rc-a"
    assert "rc-a" not in repr(a)
    # Omitted: no Recharge webhooks for that store (one merchant's secret signs for no other).
    assert b is not None and b.recharge_key() is None
    other = reg.get("else.myshopify.com")
    assert other is not None and other.is_default and other.recharge_key() == b"rc-env"
    alone = load_stores(Settings(shopify_webhook_secret="s")).get("x.example")
    assert alone is not None and alone.recharge_key() is None


@pytest.mark.parametrize(
    ("text", "env_secret", "shopify_shop", "sole"),
    [
        (None, "s", "Shop-A.myshopify.com ", "shop-a.myshopify.com"),  # the default store, named
        (None, "s", "", None),  # the default store alone has no shop of its own
        (ONLY_A, "", "", "brand-a.myshopify.com"),  # the file's only store
        (ONLY_A, "s", "brand-a.myshopify.com", None),  # that store and the default: two
        (ONLY_A + '[stores."b.example"]\nwebhook_secret = "w"\n', "", "", None),  # two
        (None, "", "x.myshopify.com", None),  # no store at all
    ],
)
def test_the_sole_shop(
    tmp_path: Path, text: str | None, env_secret: str, shopify_shop: str, sole: str | None
) -> None:
    kw: dict[str, object] = {"shopify_webhook_secret": env_secret, "pipelines_write_key": "k"}
    s = settings_with(tmp_path, text, **kw) if text else Settings(**kw)  # type: ignore[arg-type]
    assert load_stores(s).sole_shop(shopify_shop) == sole


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[stores.\"a.myshopify.com\"\nwebhook_secret = 'topsecret'", "not valid TOML"),
        ("[stores.\"a.myshopify.com\"]\nwebhook_secret = 'topsecret'\nsecret = 1", "secret"),
        (
            "[stores.\"a.myshopify.com\"]\nwebhook_secret = 'topsecret'\ntime_zone = 'Mars/Base'",
            "time zone",
        ),
        (
            "[stores.\"a.myshopify.com\"]\nwebhook_secret = 'topsecret'\ncurrency = 'EURO'",
            "currency",
        ),
        ("[stores.\"a.myshopify.com\"]\nwebhook_secret = 'topsecret'", "no pipelines_write_key"),
        ("[stores.\"a.myshopify.com\"]\npipelines_write_key = 'topsecret'", "no webhook secret"),
        (
            "[stores.\"a.myshopify.com\"]\nwebhook_secret = 'topsecret'\npipelines_region = 'ap'",
            "pipelines_region",
        ),
    ],
)
def test_a_bad_file_is_one_config_error_without_secrets(
    tmp_path: Path, text: str, names: str
) -> None:
    s = settings_with(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        require_service_config(s)
    assert str(err.value).startswith("BRIDGE_STORES_FILE")
    assert "topsecret" not in str(err.value)


def test_a_missing_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_stores(Settings(bridge_stores_file="/nonexistent/stores.toml"))


def test_the_registry_is_read_once_per_settings(tmp_path: Path) -> None:
    s = settings_with(tmp_path, ONLY_A, identity_hash_key="k")
    first = stores_for(s)
    (tmp_path / "stores.toml").write_text("not toml [")
    assert stores_for(s) is first
    require_service_config(s)  # a file of stores needs no single-store secret


def test_a_stores_file_needs_a_secret_to_key_the_email_hash(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        require_service_config(settings_with(tmp_path, ONLY_A))
    assert str(err.value).startswith("IDENTITY_HASH_KEY")
    require_service_config(settings_with(tmp_path, ONLY_A, identity_hash_key="k"))
    require_service_config(settings_with(tmp_path, ONLY_A, shopify_webhook_secret="s"))


def test_email_key_is_a_keyed_hash() -> None:
    plain = identity.email_key("A@B.co")
    try:
        identity.configure_email_hash(b"key-1")
        one = identity.email_key(" a@b.CO ")
        identity.configure_email_hash(b"key-2")
        two = identity.email_key("a@b.co")
    finally:
        identity.configure_email_hash(b"")
    assert one.startswith("email:") and len(one) == 6 + 32
    assert len({plain, one, two}) == 3
    assert "a@b.co" not in one


def test_email_hash_key_setting() -> None:
    explicit = Settings(identity_hash_key=SecretStr("k"), shopify_webhook_secret="s")
    assert explicit.email_hash_key == b"k"
    derived = Settings(shopify_webhook_secret="s1,s2").email_hash_key
    assert derived == Settings(shopify_webhook_secret="s1").email_hash_key
    assert derived != Settings(shopify_webhook_secret="s2").email_hash_key
    assert b"s1" not in derived


def test_the_volume_check_compares_in_each_stores_own_time_zone(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    from bridge.monitoring.monitor import shop_zone

    s = settings_with(
        tmp_path,
        GOOD,
        shopify_webhook_secret="env",
        pipelines_write_key="env-key",
        shop_timezone="America/New_York",
    )
    assert shop_zone(s, "brand-a.myshopify.com") == ZoneInfo("Europe/Berlin")
    # A store without `time_zone`, and the default store, keep SHOP_TIMEZONE.
    assert shop_zone(s, "brand-b.myshopify.com") == ZoneInfo("America/New_York")
    assert shop_zone(s, "other.myshopify.com") == ZoneInfo("America/New_York")


def test_a_shops_context_is_built_once_per_process(tmp_path: Path) -> None:
    from bridge import keyed
    from bridge.services import Services

    s = settings_with(tmp_path, GOOD, shopify_webhook_secret="env", pipelines_write_key="env-key")
    before = keyed._key
    try:
        services = Services.build(s)  # connects lazily: no Redis is needed here
        a = services.shop("brand-a.myshopify.com")
        assert services.shop("brand-a.myshopify.com") is a
        assert a.rules.shop_currency == "EUR"
        assert services.shop("other.myshopify.com").rules.shop_currency == "USD"
    finally:
        identity.configure_email_hash(before)  # Services.build set the process's key


def test_a_store_names_its_own_replenishment_metafields(tmp_path: Path) -> None:
    from bridge.worker.processor import ProcessConfig

    text = GOOD.replace(
        'currency = "eur"',
        'currency = "eur"\nreplenishable_metafield = "shop.refill"\n'
        'days_to_replenish_metafield = " shop.refill_days "',
    )
    s = settings_with(
        tmp_path,
        text,
        shopify_webhook_secret="env",
        pipelines_write_key="env-key",
        product_days_to_replenish_metafield="env.days",
    )
    reg = load_stores(s)
    a = ProcessConfig.for_shop(s, reg.get("brand-a.myshopify.com")).metafields
    assert (a.replenishable, a.days_to_replenish) == ("shop.refill", "shop.refill_days")
    b = ProcessConfig.for_shop(s, reg.get("brand-b.myshopify.com")).metafields
    assert (b.replenishable, b.days_to_replenish) == ("custom.replenishable", "env.days")
    assert ProcessConfig.for_shop(s, None).policy("x").metafields == b


@pytest.mark.parametrize("bad", ["replenishable", ".key", "ns.", "a b.c", ""])
def test_a_metafield_must_be_namespace_dot_key(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match=r"namespace\.key"):
        load_stores(settings_with(tmp_path, ONLY_A + f'replenishable_metafield = "{bad}"\n'))
    with pytest.raises(ValueError, match=r"namespace\.key"):
        Settings(product_replenishable_metafield=bad)
