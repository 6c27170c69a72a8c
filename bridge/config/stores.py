"""Which stores this deployment serves, and each one's secrets, Pipelines workspace and locale.

One deployment can serve several shops (stores or brands), each into its own Customer.io
workspace. `BRIDGE_STORES_FILE` names a TOML file read once at start (never per request):

    [stores."brand-a.myshopify.com"]
    webhook_secrets = ["new-app-secret", "old-app-secret"]   # several during a rotation
    admin_webhook_key = "64-hex key from Settings > Notifications > Webhooks"   # optional
    pipelines_write_key = "..."
    pipelines_region = "eu"            # or pipelines_url = "https://.../v1"
    time_zone = "Europe/Berlin"
    currency = "EUR"
    recharge_client_secret = "..."     # optional: verifies its Recharge webhooks
    pixel_events = ["product_viewed"]  # optional: browse events forwarded (docs/browse.md),
    pixel_sample_rate = 0.5            # and the other PIXEL_* volume settings in lower case
    replenishable_metafield = "custom.replenishable"          # optional (docs/products.md)
    days_to_replenish_metafield = "custom.days_to_replenish"  # optional

Omitted fields take the single-store environment values (SHOPIFY_WEBHOOK_SECRET,
PIPELINES_WRITE_KEY, ...). Those variables also keep working alone: when SHOPIFY_WEBHOOK_SECRET
is set they form the *default store*, which serves every shop the file does not name. Without
it, a shop the file does not name is unknown (the web answers 401).

The one exception is `recharge_client_secret`: a store without one takes no Recharge webhooks,
whatever RECHARGE_CLIENT_SECRET says. A Shopify app secret is one app's, shared by every shop
that installed it; a Recharge client secret belongs to one merchant's Recharge account, so
letting it sign for every store in the file would let one merchant's secret write another
store's subscriptions.
"""

from __future__ import annotations

import threading
import tomllib
import zoneinfo
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from bridge.config.settings import (
    EU_PIPELINES_URL,
    US_PIPELINES_URL,
    ConfigError,
    Settings,
    check_metafield,
    check_pipelines_url,
)


class StoreConfig(BaseModel):
    """One shop's configuration. Secrets are `SecretStr` so they never show in a repr or log."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shop: str
    webhook_secrets: tuple[SecretStr, ...] = ()
    admin_webhook_key: SecretStr | None = None
    pipelines_write_key: SecretStr = SecretStr("")
    pipelines_url: str = US_PIPELINES_URL
    dry_run: bool = False
    time_zone: str = "UTC"
    currency: str = "USD"
    # Verifies the shop's Recharge webhooks (web/recharge.py); None: it takes none.
    recharge_client_secret: SecretStr | None = None
    # issue 17: the product metafields holding replenishment data (None: the environment's).
    replenishable_metafield: str | None = None
    days_to_replenish_metafield: str | None = None
    is_default: bool = False
    # Browse events (issue 17): None takes the environment's PIXEL_* value.
    pixel_events: tuple[str, ...] | None = None
    pixel_view_window_s: int | None = Field(default=None, ge=0)
    pixel_sample_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    pixel_client_hourly_cap: int | None = Field(default=None, ge=0)

    @field_validator("shop")
    @classmethod
    def _shop(cls, v: str) -> str:
        return v.strip().lower()

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        if len(v) != 3 or not v.isalpha():
            raise ValueError("must be a three-letter ISO 4217 code")
        return v.upper()

    @field_validator("pipelines_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_pipelines_url(v)

    @field_validator("pixel_events")
    @classmethod
    def _pixel_events(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        from bridge.identity.browse_policy import PIXEL_EVENTS

        unknown = [n for n in v or () if n not in PIXEL_EVENTS]
        if unknown:
            raise ValueError(f"unknown pixel event {unknown[0]!r}")
        return v

    def recharge_key(self) -> bytes | None:
        """The Recharge API client secret that signs this shop's Recharge webhooks, or None."""
        secret = self.recharge_client_secret
        value = secret.get_secret_value().strip() if secret is not None else ""
        return value.encode() if value else None

    def signing_keys(self) -> list[bytes]:
        """Every key that may have signed this shop's webhooks: the app secrets (several during
        a rotation) and the store-admin signing key (webhooks created in the store admin)."""
        keys = [s.get_secret_value().encode() for s in self.webhook_secrets]
        if self.admin_webhook_key is not None:
            keys.append(self.admin_webhook_key.get_secret_value().encode())
        return [k for k in keys if k]

    @property
    def sends(self) -> bool:
        """True when calls go to Pipelines (False: the dry-run sink)."""
        return not self.dry_run and bool(self.pipelines_write_key.get_secret_value())


class _StoreEntry(BaseModel):
    """One `[stores."<shop>"]` table as written in the file (everything optional)."""

    model_config = ConfigDict(extra="forbid")

    webhook_secrets: list[str] | None = None
    webhook_secret: str | None = None
    admin_webhook_key: str | None = None
    pipelines_write_key: str | None = None
    pipelines_region: Literal["us", "eu"] | None = None
    pipelines_url: str | None = None
    time_zone: str | None = None
    currency: str | None = None
    recharge_client_secret: str | None = None
    pixel_events: list[str] | None = None
    pixel_view_window_s: int | None = None
    pixel_sample_rate: float | None = None
    pixel_client_hourly_cap: int | None = None
    replenishable_metafield: str | None = None
    days_to_replenish_metafield: str | None = None

    @field_validator("replenishable_metafield", "days_to_replenish_metafield")
    @classmethod
    def _metafield(cls, v: str | None) -> str | None:
        return None if v is None else check_metafield(v)


class _StoresFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stores: dict[str, _StoreEntry] = Field(default_factory=dict)


class StoreRegistry:
    """Shop domain -> StoreConfig, with the environment's default store as the fallback."""

    def __init__(self, stores: dict[str, StoreConfig], default: StoreConfig | None) -> None:
        self.stores = stores
        self.default = default

    def get(self, shop: str) -> StoreConfig | None:
        """The shop's configuration, the default store's, or None (an unknown shop)."""
        return self.stores.get(shop.strip().lower()) or self.default

    def takes_pixels(self, shop: str, default_shop: str = "") -> bool:
        """True when the collector takes browse events naming `shop`: a shop the stores file
        names, or the default store's own shop (SHOPIFY_SHOP). The default store serves any
        shop's signed webhooks, but a pixel is unsigned: a made-up shop must not name keys."""
        shop = shop.strip().lower()
        if shop in self.stores:
            return True
        return self.default is not None and bool(default_shop) and shop == default_shop.lower()

    def configured(self, shop: str) -> bool:
        """True when the stores file names this shop (not merely covered by the default)."""
        return shop.strip().lower() in self.stores

    def sole_shop(self, default_shop: str = "") -> str | None:
        """The shop this deployment serves when it serves exactly one, else None: the stores
        file's only store when there is no default store, or the default store alone when
        `default_shop` (SHOPIFY_SHOP) names its shop. The default store serves any shop, so
        without that name it has no shop of its own."""
        if self.default is None:
            return next(iter(self.stores)) if len(self.stores) == 1 else None
        if self.stores:
            return None
        return default_shop.strip().lower() or None


def default_store(settings: Settings) -> StoreConfig | None:
    """The single-store configuration from the environment, or None without a webhook secret."""
    if not settings.webhook_secrets:
        return None
    return StoreConfig(
        shop="*",
        webhook_secrets=tuple(SecretStr(s.decode()) for s in settings.webhook_secrets),
        pipelines_write_key=settings.pipelines_write_key,
        pipelines_url=settings.pipelines_url,
        dry_run=settings.dry_run,
        currency=settings.shop_currency,
        time_zone=settings.shop_timezone,
        recharge_client_secret=settings.recharge_client_secret,
        is_default=True,
    )


def _store_from_entry(shop: str, entry: _StoreEntry, settings: Settings) -> StoreConfig:
    secrets = list(entry.webhook_secrets or [])
    if entry.webhook_secret:
        secrets.append(entry.webhook_secret)
    if not secrets and entry.admin_webhook_key is None:
        secrets = [s.decode() for s in settings.webhook_secrets]
    key = (
        SecretStr(entry.pipelines_write_key)
        if entry.pipelines_write_key is not None
        else settings.pipelines_write_key
    )
    if entry.pipelines_url:
        url = entry.pipelines_url
    elif entry.pipelines_region == "eu":
        url = EU_PIPELINES_URL
    elif entry.pipelines_region == "us":
        url = US_PIPELINES_URL
    else:
        url = settings.pipelines_url
    return StoreConfig(
        shop=shop,
        webhook_secrets=tuple(SecretStr(s.strip()) for s in secrets if s.strip()),
        admin_webhook_key=(
            SecretStr(entry.admin_webhook_key.strip()) if entry.admin_webhook_key else None
        ),
        pipelines_write_key=key,
        pipelines_url=url,
        dry_run=settings.pipelines_dry_run or not key.get_secret_value(),
        time_zone=entry.time_zone or settings.shop_timezone,
        currency=entry.currency or settings.shop_currency,
        # Never the environment's (see the module docstring).
        recharge_client_secret=(
            SecretStr(entry.recharge_client_secret) if entry.recharge_client_secret else None
        ),
        pixel_events=tuple(entry.pixel_events) if entry.pixel_events is not None else None,
        pixel_view_window_s=entry.pixel_view_window_s,
        pixel_sample_rate=entry.pixel_sample_rate,
        pixel_client_hourly_cap=entry.pixel_client_hourly_cap,
        replenishable_metafield=entry.replenishable_metafield,
        days_to_replenish_metafield=entry.days_to_replenish_metafield,
    )


def load_stores(settings: Settings) -> StoreRegistry:
    """Read and validate BRIDGE_STORES_FILE (if set). Raises ConfigError naming the problem,
    never echoing a secret."""
    default = default_store(settings)
    path = settings.bridge_stores_file
    if not path:
        return StoreRegistry({}, default)
    try:
        raw: dict[str, Any] = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"BRIDGE_STORES_FILE: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"BRIDGE_STORES_FILE: not valid TOML: {exc}") from None
    try:
        parsed = _StoresFile.model_validate(raw)
        stores: dict[str, StoreConfig] = {}
        for name, entry in parsed.stores.items():
            store = _store_from_entry(name, entry, settings)
            if not store.signing_keys():
                raise ConfigError(f"BRIDGE_STORES_FILE: {store.shop}: no webhook secret")
            if not store.sends and not settings.pipelines_dry_run:
                raise ConfigError(
                    f"BRIDGE_STORES_FILE: {store.shop}: no pipelines_write_key "
                    "(set PIPELINES_DRY_RUN=1 to run without sending)"
                )
            stores[store.shop] = store
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"BRIDGE_STORES_FILE: {where}: {err['msg']}") from None
    return StoreRegistry(stores, default)


_lock = threading.Lock()
_cache: dict[int, tuple[Settings, StoreRegistry]] = {}


def stores_for(settings: Settings) -> StoreRegistry:
    """The registry for these settings, read once per settings object (then served from
    memory: the request path never reads the file or Redis for it). Raises ConfigError."""
    with _lock:
        hit = _cache.get(id(settings))
        if hit is not None and hit[0] is settings:
            return hit[1]
    registry = load_stores(settings)
    with _lock:
        _cache[id(settings)] = (settings, registry)
    return registry


def require_service_config(settings: Settings) -> StoreRegistry:
    """What `web` and `worker` cannot run without, checked; returns the stores registry.
    Raises ConfigError naming the first problem, never echoing a secret."""
    registry = stores_for(settings)  # validates the file (each store has a secret and a key)
    if settings.bridge_stores_file:
        if not settings.webhook_secrets and not settings.identity_hash_key.get_secret_value():
            # email_hash_key would be derived from an empty secret, i.e. from a constant in
            # this public source: anyone could recompute every email-keyed record name.
            raise ConfigError(
                "IDENTITY_HASH_KEY is not set: with BRIDGE_STORES_FILE and no "
                "SHOPIFY_WEBHOOK_SECRET the email hash would have no secret key"
            )
        return registry
    if not settings.webhook_secrets:
        raise ConfigError("SHOPIFY_WEBHOOK_SECRET is not set: webhooks cannot be verified")
    if not settings.pipelines_write_key.get_secret_value() and not settings.pipelines_dry_run:
        raise ConfigError(
            "PIPELINES_WRITE_KEY is not set (set PIPELINES_DRY_RUN=1 to run without sending)"
        )
    return registry
