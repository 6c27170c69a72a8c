"""A small client for the Shopify Admin GraphQL API: queries, cursor pages, throttle-aware waits.

The only module that talks to the Admin API (httpx, explicit timeouts, injectable transport).
It reads the `extensions.cost.throttleStatus` of every answer and waits before the bucket runs
dry; a `THROTTLED` answer (HTTP 200 with that error code, or a 429) is retried after the time
the bucket needs to refill. Errors:

    AdminError            anything the API refused or that kept failing (str() has no PII)
    └── AdminAccessDenied an ACCESS_DENIED error or HTTP 401/403: the token lacks a scope

It never logs the token, payloads or emails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from bridge.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_API_VERSION = "2025-07"
# Without read_all_orders the Admin API shows only the orders of the last 60 days.
DEFAULT_ORDER_WINDOW_DAYS = 60

_MONEY = "shopMoney { amount currencyCode } presentmentMoney { amount currencyCode }"

# One order as the backfill needs it; `backfill.rest_order` turns it into the REST shape.
ORDER_FIELDS = f"""
  id legacyResourceId name email phone test
  createdAt processedAt updatedAt cancelledAt closedAt cancelReason
  currencyCode presentmentCurrencyCode displayFinancialStatus
  totalPriceSet {{ {_MONEY} }}
  subtotalPriceSet {{ {_MONEY} }}
  totalTaxSet {{ {_MONEY} }}
  totalDiscountsSet {{ {_MONEY} }}
  totalShippingPriceSet {{ {_MONEY} }}
  discountCodes
  customAttributes {{ key value }}
  shippingAddress {{ countryCodeV2 }}
  billingAddress {{ countryCodeV2 }}
  customer {{
    id email phone firstName lastName state tags createdAt updatedAt
    emailMarketingConsent {{ marketingState }}
    smsMarketingConsent {{ marketingState }}
    defaultAddress {{ countryCodeV2 }}
  }}
  lineItems(first: 100) {{
    nodes {{
      id name title quantity sku vendor
      variant {{ id }}
      product {{ id productType }}
      originalUnitPriceSet {{ {_MONEY} }}
      originalTotalSet {{ {_MONEY} }}
    }}
  }}
  refunds(first: 50) {{
    id createdAt
    totalRefundedSet {{ {_MONEY} }}
  }}
"""

ORDERS_QUERY = f"""
query Orders($first: Int!, $after: String, $query: String, $sortKey: OrderSortKeys) {{
  orders(first: $first, after: $after, query: $query, sortKey: $sortKey) {{
    pageInfo {{ hasNextPage endCursor }}
    nodes {{ {ORDER_FIELDS} }}
  }}
}}
"""

ORDERS_COUNT_QUERY = """
query OrdersCount($query: String) { ordersCount(query: $query, limit: null) { count precision } }
"""

OLDEST_ORDER_QUERY = """
query Oldest { orders(first: 1, sortKey: CREATED_AT) { nodes { id createdAt } } }
"""

SCOPES_QUERY = "query Scopes { currentAppInstallation { accessScopes { handle } } }"

PRODUCT_TYPES_QUERY = """
query ProductTypes($ids: [ID!]!) { nodes(ids: $ids) { ... on Product { id productType } } }
"""


class AdminError(Exception):
    """The Admin API refused a query or kept failing; `str()` names codes, never payloads."""


class AdminAccessDenied(AdminError):
    """The token lacks a scope the query needs (ACCESS_DENIED, HTTP 401 or 403)."""


@dataclass(frozen=True)
class Throttle:
    """The cost bucket as the last answer reported it (`extensions.cost.throttleStatus`)."""

    maximum: float
    available: float
    restore_rate: float

    def wait_for(self, cost: float) -> float:
        """Seconds until `cost` points are available (0 when they already are)."""
        if self.available >= cost or self.restore_rate <= 0:
            return 0.0
        return (min(cost, self.maximum) - self.available) / self.restore_rate


def throttle_of(body: dict[str, Any]) -> Throttle | None:
    """The throttle status of an answer, or None when it carries none."""
    cost = (body.get("extensions") or {}).get("cost") or {}
    status = cost.get("throttleStatus") or {}
    try:
        return Throttle(
            maximum=float(status["maximumAvailable"]),
            available=float(status["currentlyAvailable"]),
            restore_rate=float(status["restoreRate"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def requested_cost(body: dict[str, Any]) -> float | None:
    cost = (body.get("extensions") or {}).get("cost") or {}
    value = cost.get("requestedQueryCost")
    return float(value) if isinstance(value, int | float) else None


def error_codes(body: dict[str, Any]) -> list[str]:
    """The `extensions.code` of every GraphQL error ("UNKNOWN" when an error names none)."""
    codes = []
    for err in body.get("errors") or []:
        if isinstance(err, dict):
            codes.append(str((err.get("extensions") or {}).get("code") or "UNKNOWN"))
        else:
            codes.append("UNKNOWN")
    return codes


@dataclass(frozen=True)
class Page:
    """One page of a connection: its nodes and where the next page starts."""

    nodes: list[dict[str, Any]]
    end_cursor: str | None
    has_next: bool


@dataclass
class AdminStats:
    requests: int = 0
    throttled: int = 0
    retries: int = 0
    waited_s: float = 0.0


@dataclass
class AdminClient:
    """Queries one shop's Admin GraphQL API. Build with `AdminClient.from_settings` or directly."""

    shop: str
    token: str
    api_version: str = DEFAULT_API_VERSION
    url: str = ""
    timeout_s: float = 30.0
    max_attempts: int = 6
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    stats: AdminStats = field(default_factory=AdminStats)
    _throttle: Throttle | None = None
    _last_cost: float = 0.0
    _client: httpx.Client | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **kw: Any) -> AdminClient:
        """From SHOPIFY_SHOP, SHOPIFY_ADMIN_TOKEN, SHOPIFY_API_VERSION, SHOPIFY_ADMIN_URL.

        Raises AdminError naming the variable when the shop or token is missing.
        """
        if not settings.shopify_shop:
            raise AdminError("SHOPIFY_SHOP is not set")
        token = settings.shopify_admin_token.get_secret_value()
        if not token:
            raise AdminError("SHOPIFY_ADMIN_TOKEN is not set")
        return cls(
            shop=settings.shopify_shop.strip().lower(),
            token=token,
            api_version=settings.shopify_api_version,
            url=settings.shopify_admin_url,
            **kw,
        )

    @property
    def endpoint(self) -> str:
        if self.url:
            return self.url
        return f"https://{self.shop}/admin/api/{self.api_version}/graphql.json"

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                timeout=httpx.Timeout(self.timeout_s, connect=10.0),
                transport=self.transport,
                headers={"X-Shopify-Access-Token": self.token, "User-Agent": "cartbridge"},
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self.stats.waited_s += seconds
            self.sleep(seconds)

    def query(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one query and return its `data`. Waits out throttling; raises AdminError."""
        # Wait before sending when the bucket cannot pay for another query like the last one.
        if self._throttle is not None and self._last_cost:
            self._pause(self._throttle.wait_for(self._last_cost))
        last_problem = "no attempt"
        for attempt in range(self.max_attempts):
            self.stats.requests += 1
            try:
                resp = self._http().post(
                    self.endpoint, json={"query": query, "variables": variables or {}}
                )
            except httpx.HTTPError as exc:
                last_problem = f"network error {type(exc).__name__}"
                self.stats.retries += 1
                self._pause(min(2.0**attempt, 30.0))
                continue
            if resp.status_code in (401, 403):
                raise AdminAccessDenied(f"HTTP {resp.status_code}: the token was refused")
            body: dict[str, Any] = {}
            try:
                parsed = resp.json()
                if isinstance(parsed, dict):
                    body = parsed
            except ValueError:
                body = {}
            throttle = throttle_of(body)
            if throttle is not None:
                self._throttle = throttle
            codes = error_codes(body)
            if resp.status_code == 429 or "THROTTLED" in codes:
                self.stats.throttled += 1
                self.stats.retries += 1
                cost = requested_cost(body) or self._last_cost or 50.0
                wait = throttle.wait_for(cost) if throttle else 0.0
                if wait <= 0:
                    wait = float(resp.headers.get("Retry-After") or 1.0)
                log.warning("admin api throttled", extra={"wait_s": round(wait, 3)})
                self._pause(wait)
                last_problem = "THROTTLED"
                continue
            if resp.status_code >= 500:
                last_problem = f"HTTP {resp.status_code}"
                self.stats.retries += 1
                self._pause(min(2.0**attempt, 30.0))
                continue
            if "ACCESS_DENIED" in codes:
                raise AdminAccessDenied("ACCESS_DENIED: the token lacks a scope this query needs")
            if resp.status_code >= 400 or codes:
                raise AdminError(f"HTTP {resp.status_code}, errors {sorted(set(codes))}")
            data = body.get("data")
            if not isinstance(data, dict):
                raise AdminError("answer has no data")
            spent = (body.get("extensions") or {}).get("cost") or {}
            actual = spent.get("actualQueryCost") or spent.get("requestedQueryCost")
            if isinstance(actual, int | float):
                self._last_cost = float(actual)
            return data
        raise AdminError(f"gave up after {self.max_attempts} attempts: {last_problem}")

    # --- what the backfill and reconciliation ask -------------------------------------------
    def order_pages(
        self,
        *,
        search: str | None = None,
        after: str | None = None,
        page_size: int = 50,
        sort_key: str = "ID",
    ) -> Iterator[Page]:
        """Every page of `orders(query: search)`, starting after `after`. Raises AdminError."""
        cursor = after
        while True:
            data = self.query(
                ORDERS_QUERY,
                {"first": page_size, "after": cursor, "query": search, "sortKey": sort_key},
            )
            conn = data.get("orders") or {}
            info = conn.get("pageInfo") or {}
            page = Page(
                nodes=list(conn.get("nodes") or []),
                end_cursor=info.get("endCursor"),
                has_next=bool(info.get("hasNextPage")),
            )
            yield page
            if not page.has_next or not page.end_cursor:
                return
            cursor = page.end_cursor

    def orders_count(self, search: str | None = None) -> int | None:
        """How many orders match (None when the API cannot say)."""
        try:
            data = self.query(ORDERS_COUNT_QUERY, {"query": search})
        except AdminError:
            return None
        count = (data.get("ordersCount") or {}).get("count")
        return int(count) if isinstance(count, int) else None

    def access_scopes(self) -> set[str] | None:
        """The scopes granted to the token (None when the API will not say)."""
        try:
            data = self.query(SCOPES_QUERY)
        except AdminError:
            return None
        install = data.get("currentAppInstallation") or {}
        return {str(s.get("handle")) for s in install.get("accessScopes") or [] if s}

    def oldest_order_at(self) -> datetime | None:
        """When the oldest order the token can see was created."""
        data = self.query(OLDEST_ORDER_QUERY)
        nodes = (data.get("orders") or {}).get("nodes") or []
        if not nodes:
            return None
        try:
            return datetime.fromisoformat(str(nodes[0]["createdAt"]).replace("Z", "+00:00"))
        except (KeyError, ValueError):
            return None

    def product_types(self, product_ids: list[str]) -> dict[str, str]:
        """Product id -> product type for up to 250 ids per query (missing types left out)."""
        out: dict[str, str] = {}
        for i in range(0, len(product_ids), 250):
            chunk = product_ids[i : i + 250]
            gids = [f"gid://shopify/Product/{pid}" for pid in chunk]
            data = self.query(PRODUCT_TYPES_QUERY, {"ids": gids})
            for node in data.get("nodes") or []:
                if isinstance(node, dict) and node.get("id") and node.get("productType"):
                    out[str(node["id"]).rsplit("/", 1)[-1]] = str(node["productType"])
        return out


@dataclass(frozen=True)
class Visibility:
    """What the token can see, and the loud warnings when it cannot see everything."""

    scopes: frozenset[str] | None
    oldest_order_at: datetime | None
    warnings: tuple[str, ...]


def check_visibility(client: AdminClient, now: datetime) -> Visibility:
    """Warn when only the last 60 days of orders are visible (no `read_all_orders`).

    Scopes come from `currentAppInstallation`; when they cannot be read, the oldest visible
    order decides (an oldest order younger than ~60 days suggests the window). Raises AdminError.
    """
    scopes = client.access_scopes()
    oldest = client.oldest_order_at()
    warnings: list[str] = []
    if scopes is not None and "read_all_orders" not in scopes:
        warnings.append(
            "the token has no read_all_orders scope: Shopify shows only the last 60 days of "
            "orders, so older customers get no order traits (request read_all_orders)"
        )
    elif scopes is None and oldest is not None:
        age = (now - oldest).days
        if age <= DEFAULT_ORDER_WINDOW_DAYS + 1:
            warnings.append(
                f"the oldest visible order is {age} days old: the token may lack "
                "read_all_orders (only the last 60 days are visible without it)"
            )
    return Visibility(frozenset(scopes) if scopes is not None else None, oldest, tuple(warnings))


EMPTY_EMAIL_WARNING = (
    "{n} of {total} orders with a customer came back without an email: the app likely lacks "
    "protected customer data access (Level 2: name, email, phone, address), so those people "
    "can only be identified by customer id"
)
