"""The one reader of the environment: every setting the bridge has, typed and validated once.

Tests build `Settings(...)` directly; nothing else in the package calls `os.environ`.
"""

from __future__ import annotations

import hashlib
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

US_PIPELINES_URL = "https://cdp.customer.io/v1"
EU_PIPELINES_URL = "https://cdp-eu.customer.io/v1"
# OPS_TOKEN and OPS_ADMIN_TOKEN: long enough not to be guessed, short enough to be typed.
MIN_OPS_TOKEN_CHARS = 16
MAX_OPS_TOKEN_CHARS = 512


class ConfigError(Exception):
    """A missing or invalid setting; `str()` is one line naming the variable."""


def check_pipelines_url(value: str) -> str:
    """The Pipelines base URL without a trailing slash; ValueError unless it is an http(s) URL
    whose path ends in /v1 (the calls go to `{base}/batch`: any other base gets 404s)."""
    value = value.rstrip("/")
    if not value.startswith(("http://", "https://")) or not value.endswith("/v1"):
        raise ValueError(f"must be an http(s) URL ending in /v1, like {US_PIPELINES_URL}")
    return value


def check_redis_url(value: str) -> str:
    """ValueError unless redis-py can connect with `value` (`localhost:6379` lacks a scheme
    and would fail on first use, deep inside a worker or a request)."""
    # Local: reading the settings (every CLI command) does not load the Redis client.
    from bridge.store.facade import check_url

    try:
        check_url(value)
    except ValueError as exc:
        raise ValueError(f"must be a URL like redis://localhost:6379/0 ({exc})") from None
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    port: int = 8000
    redis_url: str = "redis://localhost:6379/0"
    # issue 19: any node of a Redis Cluster holding the bridge's data (docs/redis-cluster.md);
    # unset, the data stays on REDIS_URL. RQ's wake-up queues stay on REDIS_URL either way.
    data_redis_url: str = ""
    redis_tls_verify: bool = False
    shopify_webhook_secret: SecretStr = SecretStr("")
    # issue 16: the Recharge API client secret that signs the default store's Recharge webhooks.
    recharge_client_secret: SecretStr = SecretStr("")
    pipelines_write_key: SecretStr = SecretStr("")
    pipelines_url: str = US_PIPELINES_URL
    pipelines_region: Literal["us", "eu"] = "us"
    pipelines_dry_run: bool = False
    dry_run_file: str = "dry-run.jsonl"
    shop_currency: str = "USD"

    skip_test_orders: bool = True
    event_naming: Literal["snake", "segment"] = "snake"
    order_completed_on: Literal["orders/paid", "orders/create"] = "orders/paid"

    webhook_dedupe_ttl_s: int = 72 * 3600
    max_body_bytes: int = 5 * 1024 * 1024
    # A client has this long to send a whole request (bridge/web/server.py), else 408 and closed.
    web_request_deadline_s: float = Field(default=5.0, gt=0.0, le=300.0)
    # Bytes of requests and answers each web worker holds for its connections at most, beyond
    # which the connection asking for more is answered 503 and closed (bridge/web/server.py).
    web_buffer_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)

    drain_batch_size: int = Field(default=200, ge=1, le=5000)
    drain_time_budget_s: float = 5.0
    # How long a drain that emptied its shop's queue waits for the next webhook before it ends
    # (0: never). Under light traffic this serves a run of webhooks with one RQ job instead of
    # one job each (~75 Redis commands a job); it never waits while another job is queued.
    drain_linger_ms: int = Field(default=250, ge=0, le=2000)
    # Once a lingering drain's wait brings a webhook, how long it lets more gather behind it
    # before it processes them as one batch (0: at once). The official client batches the same
    # way (customerio-cdp-analytics: upload_interval 0.5 s); under light traffic one batch and
    # one delivery round then serve many webhooks, not one each (~44 Redis commands a webhook;
    # docs/capacity.md). Never while another job is queued.
    drain_gather_ms: int = Field(default=500, ge=0, le=5000)
    http_timeout_s: float = 10.0
    retry_horizon_s: int = 72 * 3600
    queue_name: str = "cartbridge"
    log_level: str = "INFO"

    # issue 5: backfill and reconciliation through the Shopify Admin GraphQL API.
    shopify_shop: str = ""  # e.g. example.myshopify.com
    shopify_admin_token: SecretStr = SecretStr("")
    shopify_api_version: str = "2026-10"  # newest stable; each is supported 12 months
    shopify_admin_url: str = ""  # overrides https://{shop}/admin/api/{version}/graphql.json
    backfill_rate_per_s: float = Field(default=50.0, gt=0)
    backfill_category_traits: bool = False
    backfill_category_traits_max: int = Field(default=50, ge=0, le=250)
    reconcile_every_s: int = Field(default=0, ge=0)  # 0 = the worker never reconciles
    reconcile_window_s: int = Field(default=7200, ge=60)
    reconcile_grace_s: int = Field(default=300, ge=0)
    # issue 4: delivery that never loses an event
    deliver_concurrency: int = Field(default=4, ge=1, le=32)  # POSTs in flight per shop
    retry_base_s: float = Field(default=1.0, gt=0)  # full-jitter backoff: base * 2**attempt
    retry_cap_s: float = Field(default=600.0, gt=0)  # ... capped here (Retry-After wins)
    pause_probe_s: float = Field(default=60.0, gt=0)  # probe a refused write key this often
    dead_letter_retention_s: int = Field(default=7 * 86_400, ge=3600)
    # issue 3 (identity, joins and suppression)
    checkout_contact_wait_s: int = Field(default=24 * 3600, ge=60)
    refund_order_wait_s: int = Field(default=6 * 3600, ge=60)
    # A billing fact whose contract (or a subscription whose Recharge customer) is unknown waits
    # this long, is then looked up through the Admin API where it can be, and is parked after
    # the same time again. Short: a payment_failed that waits delays a save flow.
    subscription_wait_s: int = Field(default=600, ge=60)
    unjoined_order_window_s: int = Field(default=3600, ge=0)
    identity_hint_customer_attr: str = "cartbridge_customer_id"
    identity_hint_anonymous_attr: str = "cartbridge_anonymous_id"
    # Issue 7: many stores, hostile input, compliance topics, PII.
    bridge_stores_file: str = ""  # TOML: shop -> secrets, write key, region, time zone, currency
    stale_after_s: int = Field(default=24 * 3600, ge=0)  # 0 turns the staleness filter off
    # Unsigned requests are logged at most once per reason this often (each one is counted).
    rejected_log_every_s: float = Field(default=10.0, ge=0.0)
    forward_redactions: bool = False  # customers/redact also sends Customer.io `User Deleted`
    identity_hash_key: SecretStr = SecretStr("")  # key of the email hash in state record names
    gdpr_export_ttl_s: int = 30 * 86_400
    # issue 17: storefront browse events (POST /pixel, docs/browse.md). Per-store overrides of
    # the first four live in the stores file.
    pixel_events: str = "product_viewed,product_added_to_cart"  # forwarded; comma-separated
    pixel_view_window_s: int = Field(default=6 * 3600, ge=0)  # one product_viewed per product
    pixel_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)  # anonymous browsers kept
    pixel_client_hourly_cap: int = Field(default=60, ge=0)  # forwarded per browser per hour
    pixel_ip_limit_per_min: int = Field(default=600, ge=1)  # collector requests per IP
    pixel_client_limit_per_min: int = Field(default=120, ge=1)  # ... per pixel clientId
    # ... per shop, all browsers together: one storefront's flood must not fill Redis and the
    # shop's queue ahead of its signed webhooks (docs/browse.md, "Webhooks first").
    pixel_shop_limit_per_min: int = Field(default=30_000, ge=1)
    # Proxies in front of the web that append to X-Forwarded-For (Heroku's router: 1); 0 uses
    # the connection's address. Set it only behind such a proxy: the header is the client's.
    pixel_proxy_hops: int = Field(default=0, ge=0, le=5)

    @field_validator("pixel_events")
    @classmethod
    def _pixel_events(cls, v: str) -> str:
        from bridge.identity.browse_policy import PIXEL_EVENTS

        names = [n.strip() for n in v.split(",") if n.strip()]
        unknown = [n for n in names if n not in PIXEL_EVENTS]
        if unknown:
            known = ", ".join(PIXEL_EVENTS)
            raise ValueError(f"unknown pixel event {unknown[0]!r}; one of {known}")
        return ",".join(names)

    @property
    def pixel_forwarded(self) -> tuple[str, ...]:
        return tuple(n for n in self.pixel_events.split(",") if n)

    # issue 17: product metadata on items (bridge/products/, docs/products.md). The metafields
    # are `namespace.key`; a store's own (stores file) win.
    product_replenishable_metafield: str = "custom.replenishable"
    product_days_to_replenish_metafield: str = "custom.days_to_replenish"
    product_cache_ttl_s: int = Field(default=7 * 86_400, ge=3600)
    product_refresh_every_s: int = Field(default=3600, ge=0)  # 0 = no periodic refresh
    product_lookups_per_sweep: int = Field(default=100, ge=0, le=1000)

    @field_validator("product_replenishable_metafield", "product_days_to_replenish_metafield")
    @classmethod
    def _metafield(cls, v: str) -> str:
        return check_metafield(v)

    @field_validator("pipelines_url")
    @classmethod
    def _pipelines_url(cls, v: str) -> str:
        return check_pipelines_url(v)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        return check_redis_url(v)

    @field_validator("data_redis_url")
    @classmethod
    def _data_redis_url(cls, v: str) -> str:
        # One node's URL, or several separated by commas (store/cluster.py `node_urls`).
        for url in v.split(",") if v.strip() else ():
            check_redis_url(url.strip())
        return v

    @field_validator("shop_currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        if len(v) != 3 or not v.isalpha():
            raise ValueError("must be a three-letter ISO 4217 code")
        return v.upper()

    @model_validator(mode="after")
    def _region(self) -> Settings:
        if self.pipelines_region == "eu" and self.pipelines_url == US_PIPELINES_URL:
            self.pipelines_url = EU_PIPELINES_URL
        return self

    @property
    def webhook_secrets(self) -> list[bytes]:
        """Every secret that may have signed a webhook (several during a rotation)."""
        raw = self.shopify_webhook_secret.get_secret_value()
        return [s.strip().encode() for s in raw.split(",") if s.strip()]

    @property
    def dry_run(self) -> bool:
        return self.pipelines_dry_run or not self.pipelines_write_key.get_secret_value()

    @property
    def email_hash_key(self) -> bytes:
        """IDENTITY_HASH_KEY, else a key derived from the first webhook secret (set it
        explicitly: rotating the secret would otherwise change every email-keyed record name).
        Without either the derived key is public: `stores.require_service_config` refuses that."""
        explicit = self.identity_hash_key.get_secret_value()
        if explicit:
            return explicit.encode()
        first = self.webhook_secrets[0] if self.webhook_secrets else b""
        return hashlib.sha256(b"cartbridge identity hash key\x1f" + first).digest()

    # issue 6: metrics, volume-drop alerts (bridge/web/metrics.py, bridge/monitoring/)
    metrics_token: SecretStr = SecretStr("")
    metrics_public: bool = False  # /metrics without METRICS_TOKEN answers 401 unless this is set
    shop_timezone: str = "UTC"
    volume_events: str = ""  # comma-separated; empty = the naming's cart, checkout, order events
    volume_window_min: int = Field(default=60, ge=5, le=24 * 60)
    volume_drop_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    volume_min_baseline: float = Field(default=20.0, ge=0.0)
    volume_gap_factor: float = Field(default=10.0, gt=1.0)
    volume_min_silence_s: int = Field(default=900, ge=0)
    volume_check_every_s: int = Field(default=300, ge=30)
    # Events watched for a rise rather than a drop (issue 16): a wave of cancels or failed
    # payments (a broken card processor, a price change gone wrong) is news within the hour.
    volume_spike_events: str = ""  # comma-separated; empty = the naming's cancel and failure
    volume_spike_factor: float = Field(default=3.0, gt=1.0)
    volume_spike_min_events: int = Field(default=10, ge=1)
    alert_webhook_url: SecretStr = SecretStr("")
    alert_repeat_s: int = Field(default=6 * 3600, ge=60)
    # issue 18: the ops console at /ops (bridge/web/ops/): off unless OPS_TOKEN is set; replay
    # and purge need a session opened with OPS_ADMIN_TOKEN.
    ops_token: SecretStr = SecretStr("")
    ops_admin_token: SecretStr = SecretStr("")
    ops_cookie_secure: bool = True  # the session cookie only over HTTPS (`bridge dev`: false)
    # Entries kept in each person's ledger of recent calls (store/ops.py); 0 writes none.
    ops_ledger_calls: int = Field(default=50, ge=0, le=1000)

    @field_validator("ops_token", "ops_admin_token")
    @classmethod
    def _ops_token(cls, v: SecretStr) -> SecretStr:
        # The console's login is the whole of its defence: a token must be too long to guess
        # (the login also limits wrong guesses per address, web/ops/auth.py).
        n = len(v.get_secret_value())
        if n and not MIN_OPS_TOKEN_CHARS <= n <= MAX_OPS_TOKEN_CHARS:
            raise ValueError(
                f"must be {MIN_OPS_TOKEN_CHARS} to {MAX_OPS_TOKEN_CHARS} characters "
                "(make one with `openssl rand -base64 24`)"
            )
        return v

    @field_validator("shop_timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as Europe/Berlin") from None
        return v

    @property
    def key_events(self) -> list[str]:
        """The events whose volume is watched (issue 6)."""
        named = [e.strip() for e in self.volume_events.split(",") if e.strip()]
        if named:
            return named
        if self.event_naming == "segment":
            return ["Product Added", "Checkout Started", "Order Completed"]
        return ["added_to_cart", "checkout_started", "order_completed"]

    @property
    def spike_events(self) -> list[str]:
        """The events whose volume is watched for a rise (issue 16)."""
        named = [e.strip() for e in self.volume_spike_events.split(",") if e.strip()]
        if named:
            return named
        if self.event_naming == "segment":
            return ["Subscription Canceled", "Payment Failed"]
        return ["subscription_canceled", "payment_failed"]


def check_metafield(value: str) -> str:
    """A product metafield named `namespace.key` (both parts present, no spaces)."""
    namespace, _, key = value.strip().partition(".")
    if not namespace or not key or any(c.isspace() for c in value.strip()):
        raise ValueError("must be a metafield written namespace.key, e.g. custom.replenishable")
    return value.strip()


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; a bad value becomes one ConfigError line naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]).upper() if err["loc"] else "configuration"
        raise ConfigError(f"{name}: {err['msg']}") from None
