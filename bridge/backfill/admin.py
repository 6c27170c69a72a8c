"""A small client for the Shopify Admin GraphQL API: queries, cursor pages, throttle-aware waits.

The only module that talks to the Admin API (httpx, explicit timeouts, injectable transport).
It reads the `extensions.cost.throttleStatus` of every answer and waits before the bucket runs
dry; a `THROTTLED` answer (HTTP 200 with that error code, or a 429) is retried after the time
the bucket needs to refill. Errors:

    AdminError            anything the API refused or that kept failing (str() has no PII)
    ├── AdminAccessDenied an ACCESS_DENIED error or HTTP 401/403: the token lacks a scope
    └── AdminQueryRefused other GraphQL errors (a bad argument, an invalid cursor): asking
                          the same again fails the same way

It never logs the token, payloads or emails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import IO, TYPE_CHECKING, Any

import httpx
import orjson

from bridge.backfill.cost import MAX_QUERY_COST, over_limits
from bridge.backfill.cost import requested_cost as query_cost

if TYPE_CHECKING:
    from bridge.config.settings import Settings

log = logging.getLogger(__name__)

# The newest stable version when this was written; Shopify supports each for 12 months and then
# silently serves the oldest supported one instead.
DEFAULT_API_VERSION = "2026-10"
VERSION_SUPPORT_MONTHS = 12
MAX_PAGE_NODES = 250  # nodes per connection page
# Without read_all_orders the Admin API shows only the orders of the last 60 days.
DEFAULT_ORDER_WINDOW_DAYS = 60

_MONEY = "shopMoney { amount currencyCode } presentmentMoney { amount currencyCode }"
_SHOP_MONEY = "shopMoney { amount currencyCode }"

# Pieces of one order as the backfill needs it; sources/shopify/graphql.py turns it into REST shape.
ORDER_SCALARS = f"""
  id legacyResourceId name email phone test
  createdAt processedAt updatedAt cancelledAt closedAt cancelReason
  currencyCode presentmentCurrencyCode displayFinancialStatus
  totalPriceSet {{ {_MONEY} }}
  subtotalPriceSet {{ {_MONEY} }}
  totalTaxSet {{ {_SHOP_MONEY} }}
  totalDiscountsSet {{ {_SHOP_MONEY} }}
  totalShippingPriceSet {{ {_SHOP_MONEY} }}
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
"""
LINE_FIELDS = f"""
  id name title quantity sku vendor
  variant {{ id }}
  product {{ id productType }}
  originalUnitPriceSet {{ {_SHOP_MONEY} }}
"""
REFUND_LINE_FIELDS = f"""
  quantity subtotalSet {{ {_SHOP_MONEY} }}
  lineItem {{ id sku title quantity variant {{ id }} product {{ id productType }}
             originalUnitPriceSet {{ {_SHOP_MONEY} }} }}
"""
TRANSACTION_FIELDS = f"kind status amountSet {{ {_SHOP_MONEY} }}"
REFUND_SCALARS = f"id legacyResourceId createdAt totalRefundedSet {{ {_SHOP_MONEY} }}"
_PAGE_INFO = "pageInfo { hasNextPage endCursor }"


def orders_query(lines: int, refund_lines: int, transactions: int) -> str:
    """The paged orders query with these nested page sizes (`$first` orders per page)."""
    return f"""
query Orders($first: Int!, $after: String, $query: String, $sortKey: OrderSortKeys) {{
  orders(first: $first, after: $after, query: $query, sortKey: $sortKey) {{
    {_PAGE_INFO}
    nodes {{
      {ORDER_SCALARS}
      lineItems(first: {lines}) {{ {_PAGE_INFO} nodes {{ {LINE_FIELDS} }} }}
      refunds {{
        {REFUND_SCALARS}
        refundLineItems(first: {refund_lines}) {{ {_PAGE_INFO} nodes {{ {REFUND_LINE_FIELDS} }} }}
        transactions(first: {transactions}) {{ {_PAGE_INFO} nodes {{ {TRANSACTION_FIELDS} }} }}
      }}
    }}
  }}
}}
"""


ORDER_LINES_QUERY = f"""
query OrderLines($id: ID!, $first: Int!, $after: String) {{
  order(id: $id) {{
    lineItems(first: $first, after: $after) {{ {_PAGE_INFO} nodes {{ {LINE_FIELDS} }} }}
  }}
}}
"""

REFUND_LINES_QUERY = f"""
query RefundLines($id: ID!, $first: Int!, $after: String) {{
  refund(id: $id) {{
    refundLineItems(first: $first, after: $after) {{
      {_PAGE_INFO} nodes {{ {REFUND_LINE_FIELDS} }}
    }}
  }}
}}
"""

REFUND_TRANSACTIONS_QUERY = f"""
query RefundTransactions($id: ID!, $first: Int!, $after: String) {{
  refund(id: $id) {{
    transactions(first: $first, after: $after) {{ {_PAGE_INFO} nodes {{ {TRANSACTION_FIELDS} }} }}
  }}
}}
"""


def bulk_orders_query(search: str | None) -> str:
    """The bulk export: orders, line items, refunds with their lines and transactions, customer.

    Four connections, none deeper than two (Shopify allows five, two deep); no page sizes,
    which bulk operations do not need.
    """
    args = f"(query: {orjson.dumps(search).decode()})" if search else ""
    return f"""
{{
  orders{args} {{ edges {{ node {{
    {ORDER_SCALARS}
    lineItems {{ edges {{ node {{ {LINE_FIELDS} }} }} }}
    refunds {{
      {REFUND_SCALARS}
      refundLineItems {{ edges {{ node {{ id {REFUND_LINE_FIELDS} }} }} }}
      transactions {{ edges {{ node {{ id {TRANSACTION_FIELDS} }} }} }}
    }}
  }} }} }}
}}
"""


BULK_RUN_MUTATION = """
mutation BulkRun($query: String!) {
  bulkOperationRunQuery(query: $query, groupObjects: false) {
    bulkOperation { id status }
    userErrors { field message code }
  }
}
"""

BULK_POLL_QUERY = """
query BulkPoll($id: ID!) {
  bulkOperation(id: $id) {
    id status errorCode objectCount rootObjectCount fileSize url partialDataUrl
  }
}
"""

BULK_CANCEL_MUTATION = """
mutation BulkCancel($id: ID!) {
  bulkOperationCancel(id: $id) { bulkOperation { id status } userErrors { field message } }
}
"""

# A subscription contract as the backfill, reconciliation and the sweep's lookups read it;
# sources/shopify/graphql.py turns it into the contract webhook's shape. Its objects cost 1
# each (customer, billing policy, origin order), each line 2 (itself and its price).
CONTRACT_SCALARS = """
  id status revisionId createdAt updatedAt nextBillingDate currencyCode lastPaymentStatus
  customer { id email }
  billingPolicy { interval intervalCount }
  originOrder { id }
"""
CONTRACT_LINE_FIELDS = "productId variantId sku title quantity currentPrice { amount currencyCode }"
# Lines per contract in a page; a contract with more is completed with follow-up queries.
CONTRACT_LINES = 10


def contracts_query(lines: int) -> str:
    """The paged `subscriptionContracts` query with `lines` lines per contract."""
    return f"""
query SubscriptionContracts(
  $first: Int!, $after: String, $query: String, $sortKey: SubscriptionContractsSortKeys
) {{
  subscriptionContracts(first: $first, after: $after, query: $query, sortKey: $sortKey) {{
    {_PAGE_INFO}
    nodes {{
      {CONTRACT_SCALARS}
      lines(first: {lines}) {{ {_PAGE_INFO} nodes {{ {CONTRACT_LINE_FIELDS} }} }}
    }}
  }}
}}
"""


CONTRACT_QUERY = f"""
query SubscriptionContract($id: ID!) {{
  subscriptionContract(id: $id) {{
    {CONTRACT_SCALARS}
    lines(first: {CONTRACT_LINES}) {{ {_PAGE_INFO} nodes {{ {CONTRACT_LINE_FIELDS} }} }}
  }}
}}
"""

CONTRACT_LINES_QUERY = f"""
query ContractLines($id: ID!, $first: Int!, $after: String) {{
  subscriptionContract(id: $id) {{
    lines(first: $first, after: $after) {{ {_PAGE_INFO} nodes {{ {CONTRACT_LINE_FIELDS} }} }}
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


class AdminQueryRefused(AdminError):
    """The API answered the query with errors this client has no remedy for (a bad argument, a
    cursor it will not page from): the same query again fails the same way."""


class AdminCostExceeded(AdminError):
    """The query's requested cost is over Shopify's single-query maximum (MAX_COST_EXCEEDED)."""


class BulkError(AdminError):
    """A bulk operation could not run or did not complete; `str()` says what to do."""


class BulkUrlExpired(BulkError):
    """The result file's URL has expired (EXPIRED, or the download was refused)."""


@dataclass(frozen=True)
class Throttle:
    """The cost bucket as an answer reported it (`extensions.cost.throttleStatus`) and when."""

    maximum: float
    available: float
    restore_rate: float
    at: float = 0.0  # monotonic time of the answer

    def available_at(self, now: float) -> float:
        """What the bucket holds by `now`, having refilled at the restore rate since `at`."""
        return min(self.maximum, self.available + max(now - self.at, 0.0) * self.restore_rate)

    def wait_for(self, cost: float, now: float | None = None) -> float:
        """Seconds until `cost` points are available (0 when they already are)."""
        have = self.available if now is None else self.available_at(now)
        if have >= cost or self.restore_rate <= 0:
            return 0.0
        return (min(cost, self.maximum) - have) / self.restore_rate


def throttle_of(body: dict[str, Any], at: float = 0.0) -> Throttle | None:
    """The throttle status of an answer, or None when it carries none."""
    cost = (body.get("extensions") or {}).get("cost") or {}
    status = cost.get("throttleStatus") or {}
    try:
        return Throttle(
            maximum=float(status["maximumAvailable"]),
            available=float(status["currentlyAvailable"]),
            restore_rate=float(status["restoreRate"]),
            at=at,
        )
    except (KeyError, TypeError, ValueError):
        return None


def error_codes(body: dict[str, Any]) -> list[str]:
    """The `extensions.code` of every GraphQL error ("UNKNOWN" when an error names none)."""
    codes = []
    for err in body.get("errors") or []:
        if isinstance(err, dict):
            codes.append(str((err.get("extensions") or {}).get("code") or "UNKNOWN"))
        else:
            codes.append("UNKNOWN")
    return codes


def version_age_months(version: str, today: date) -> int | None:
    """Whole months between a `YYYY-MM` version's release and `today` (None for `unstable`)."""
    try:
        year, month = (int(p) for p in version.split("-", 1))
    except ValueError:
        return None
    return (today.year - year) * 12 + (today.month - month)


def version_warning(version: str, today: date) -> str | None:
    """A warning when the configured version is past Shopify's 12-month support window."""
    age = version_age_months(version, today)
    if age is None or age <= VERSION_SUPPORT_MONTHS:
        return None
    return (
        f"SHOPIFY_API_VERSION {version} is {age} months old: Shopify supports a version for "
        f"{VERSION_SUPPORT_MONTHS} months and then silently answers with the oldest supported "
        f"one instead (set SHOPIFY_API_VERSION to the newest stable version, e.g. "
        f"{DEFAULT_API_VERSION}, and the same in shopify.app.toml)"
    )


@dataclass(frozen=True)
class Page:
    """One page of a connection: its nodes and where the next page starts."""

    nodes: list[dict[str, Any]]
    end_cursor: str | None
    has_next: bool


def _page(conn: Any, complete: Callable[[dict[str, Any]], None]) -> Page:
    """One page of a top-level connection, each node completed (its nested connections read
    to the end) before the page is handed out."""
    conn = conn if isinstance(conn, dict) else {}
    info = conn.get("pageInfo") or {}
    nodes = [n for n in conn.get("nodes") or [] if isinstance(n, dict)]
    for node in nodes:
        complete(node)
    return Page(
        nodes=nodes, end_cursor=info.get("endCursor"), has_next=bool(info.get("hasNextPage"))
    )


@dataclass(frozen=True)
class PageSizes:
    """Orders per page and the nested page sizes of the orders query."""

    orders: int
    lines: int = 10
    refund_lines: int = 5
    transactions: int = 3

    def query(self) -> str:
        return orders_query(self.lines, self.refund_lines, self.transactions)


def fit_page(budget: float, want: int, sizes: PageSizes | None = None) -> PageSizes:
    """The most orders (at most `want`, at least 1) whose query costs no more than `budget`.

    When even one order is over budget, the nested sizes are halved first. Pure.
    """
    sizes = sizes or PageSizes(orders=want)
    while True:
        query = sizes.query()
        one = query_cost(query, {"first": 1})
        per_order = query_cost(query, {"first": 2}) - one
        fixed = one - per_order
        fits = int((budget - fixed) // per_order) if per_order > 0 else want
        if fits >= 1 or sizes.lines <= 1:
            return replace(sizes, orders=max(1, min(want, fits, MAX_PAGE_NODES)))
        sizes = replace(
            sizes,
            lines=max(1, sizes.lines // 2),
            refund_lines=max(1, sizes.refund_lines // 2),
            transactions=max(1, sizes.transactions // 2),
        )


def fit_contracts(budget: float, want: int, lines: int = CONTRACT_LINES) -> tuple[int, int]:
    """(contracts per page, lines per contract): the most contracts (at most `want`, at least
    1) whose query costs no more than `budget`, halving the lines while even one is over. Pure."""
    while True:
        query = contracts_query(lines)
        one = query_cost(query, {"first": 1})
        per_contract = query_cost(query, {"first": 2}) - one
        fixed = one - per_contract
        fits = int((budget - fixed) // per_contract) if per_contract > 0 else want
        if fits >= 1 or lines <= 1:
            return max(1, min(want, fits, MAX_PAGE_NODES)), lines
        lines = max(1, lines // 2)


@dataclass(frozen=True)
class BulkStatus:
    """One poll of a bulk operation."""

    id: str
    status: str
    error_code: str | None = None
    url: str | None = None
    root_count: int | None = None
    object_count: int | None = None
    file_size: int | None = None


def bulk_problem(status: BulkStatus) -> BulkError | None:
    """None while the operation runs or once it completed; else the error saying what to do."""
    if status.status in ("CREATED", "RUNNING", "CANCELING"):
        return None
    if status.status == "COMPLETED":
        return (
            None
            if status.url or status.root_count == 0
            else BulkUrlExpired(
                "the bulk operation completed without a result URL; run the same command again"
            )
        )
    if status.status == "EXPIRED":
        return BulkUrlExpired(
            "the bulk operation's result has expired (Shopify keeps it 7 days); "
            "run the same command again to export afresh (orders already queued are skipped)"
        )
    if status.status == "CANCELED":
        return BulkError(
            "the bulk operation was cancelled (in the admin or by another app session); "
            "run the same command again to start a new one"
        )
    advice = {
        "ACCESS_DENIED": "the token lacks a scope the export needs: grant read_orders "
        "(and read_all_orders, read_customers) and run again",
        "TIMEOUT": "the export ran past Shopify's 10-day limit: narrow it with --query "
        "(e.g. created_at ranges) and run once per range",
        "INTERNAL_SERVER_ERROR": "Shopify failed internally: run the same command again later",
    }
    code = status.error_code or "UNKNOWN"
    return BulkError(
        f"the bulk operation failed ({code}): "
        + advice.get(code, "run the same command again; if it keeps failing, narrow --query")
    )


@dataclass
class AdminStats:
    requests: int = 0
    throttled: int = 0
    retries: int = 0
    waited_s: float = 0.0
    cost_halvings: int = 0
    follow_ups: int = 0


@dataclass
class AdminClient:
    """Queries one shop's Admin GraphQL API. Build with `AdminClient.from_settings` or directly."""

    shop: str
    token: str = field(repr=False)
    api_version: str = DEFAULT_API_VERSION
    url: str = ""
    timeout_s: float = 30.0
    max_attempts: int = 6
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    stats: AdminStats = field(default_factory=AdminStats)
    answered_version: str | None = None
    _throttle: Throttle | None = None
    _client: httpx.Client | None = None
    _warned_version: bool = False

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

    def budget(self) -> float:
        """The most a single query may cost now: the 1 000-point cap or the bucket, if smaller."""
        if self._throttle is None:
            return float(MAX_QUERY_COST)
        return min(float(MAX_QUERY_COST), self._throttle.maximum)

    def wait_s(self, query: str, variables: dict[str, Any] | None = None) -> float:
        """Seconds `query` would wait for the bucket before being sent now (0: none)."""
        if self._throttle is None:
            return 0.0
        return self._throttle.wait_for(float(query_cost(query, variables or {})), self.clock())

    def _note_version(self, resp: httpx.Response) -> None:
        answered = resp.headers.get("X-Shopify-API-Version")
        if not answered or answered == self.answered_version:
            return
        self.answered_version = answered
        log.info("admin api version", extra={"asked": self.api_version, "answered": answered})
        if answered != self.api_version and not self._warned_version:
            self._warned_version = True
            log.warning(
                "shopify answered with another api version",
                extra={"asked": self.api_version, "answered": answered},
            )

    def query(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one query and return its `data`. Waits out throttling; raises AdminError.

        The requested cost is worked out from the text first: a query over the 1 000-point
        maximum raises AdminCostExceeded without being sent (a page over 250 nodes or an `ids`
        list over 250 raises AdminError, unsent), and the client waits until the
        bucket (as last reported, refilled since) holds the requested cost, because Shopify
        charges it up front and throttles when it cannot.
        """
        variables = variables or {}
        cost = float(query_cost(query, variables))
        if cost > MAX_QUERY_COST:
            raise AdminCostExceeded(f"requested cost {cost:.0f} is over {MAX_QUERY_COST}")
        too_big = over_limits(query, variables)
        if too_big is not None:
            # Shopify refuses a page over 250 nodes or an input list over 250 items: never sent.
            raise AdminError(f"query over Shopify's limits ({too_big})")
        last_problem = "no attempt"
        for attempt in range(self.max_attempts):
            if self._throttle is not None:
                self._pause(self._throttle.wait_for(cost, self.clock()))
            self.stats.requests += 1
            try:
                resp = self._http().post(
                    self.endpoint, json={"query": query, "variables": variables}
                )
            except httpx.HTTPError as exc:
                last_problem = f"network error {type(exc).__name__}"
                self.stats.retries += 1
                self._pause(min(2.0**attempt, 30.0))
                continue
            self._note_version(resp)
            if resp.status_code in (401, 403):
                raise AdminAccessDenied(f"HTTP {resp.status_code}: the token was refused")
            body: dict[str, Any] = {}
            try:
                parsed = resp.json()
                if isinstance(parsed, dict):
                    body = parsed
            except ValueError:
                body = {}
            throttle = throttle_of(body, self.clock())
            if throttle is not None:
                self._throttle = throttle
            codes = error_codes(body)
            if resp.status_code == 429 or "THROTTLED" in codes:
                self.stats.throttled += 1
                self.stats.retries += 1
                # Shopify's own figure for what it wants in the bucket, else ours.
                asked = ((body.get("extensions") or {}).get("cost") or {}).get("requestedQueryCost")
                need = float(asked) if isinstance(asked, int | float) else cost
                wait = throttle.wait_for(need) if throttle else 0.0
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
            if "MAX_COST_EXCEEDED" in codes:
                raise AdminCostExceeded(f"MAX_COST_EXCEEDED (computed {cost:.0f})")
            if "ACCESS_DENIED" in codes:
                raise AdminAccessDenied("ACCESS_DENIED: the token lacks a scope this query needs")
            if resp.status_code >= 400 or codes:
                raise AdminQueryRefused(f"HTTP {resp.status_code}, errors {sorted(set(codes))}")
            data = body.get("data")
            if not isinstance(data, dict):
                raise AdminError("answer has no data")
            return data
        raise AdminError(f"gave up after {self.max_attempts} attempts: {last_problem}")

    # --- what the backfill and reconciliation ask -------------------------------------------
    def order_pages(
        self,
        *,
        search: str | None = None,
        after: str | None = None,
        page_size: int = MAX_PAGE_NODES,
        sort_key: str = "ID",
    ) -> Iterator[Page]:
        """Every page of `orders(query: search)`, starting after `after`. Raises AdminError.

        Each page asks for as many orders (up to `page_size`) as fit the budget; a query
        Shopify still finds too dear is halved and asked again. Orders with more line items,
        refund lines or transactions than the page holds are completed with follow-up queries,
        so every order comes back whole.
        """
        cursor = after
        sizes: PageSizes | None = None
        while True:
            sizes = fit_page(self.budget(), page_size, sizes)
            variables = {
                "first": sizes.orders,
                "after": cursor,
                "query": search,
                "sortKey": sort_key,
            }
            try:
                data = self.query(sizes.query(), variables)
            except AdminCostExceeded:
                if sizes.orders == 1 and sizes.lines == 1:
                    raise
                self.stats.cost_halvings += 1
                page_size = max(1, sizes.orders // 2)
                if sizes.orders == 1:
                    sizes = replace(sizes, lines=max(1, sizes.lines // 2))
                log.warning("admin api query too costly, halved", extra={"orders": page_size})
                continue
            page = _page(data.get("orders"), self._complete_order)
            yield page
            if not page.has_next or not page.end_cursor:
                return
            cursor = page.end_cursor

    def _rest_of(self, query: str, gid: str, root: str, name: str, conn: Any) -> list[Any]:
        """All nodes of a nested connection: the ones in hand, then follow-up pages."""
        conn = conn if isinstance(conn, dict) else {}
        nodes = list(conn.get("nodes") or [])
        info = conn.get("pageInfo") or {}
        while info.get("hasNextPage") and info.get("endCursor"):
            self.stats.follow_ups += 1
            first = 1
            # As many per page as fit the budget (one node's cost from two probes).
            one = query_cost(query, {"first": 1})
            per = query_cost(query, {"first": 2}) - one
            if per > 0:
                first = max(1, min(MAX_PAGE_NODES, int((self.budget() - (one - per)) // per)))
            data = self.query(query, {"id": gid, "first": first, "after": info["endCursor"]})
            page = ((data.get(root) or {}).get(name)) or {}
            nodes.extend(page.get("nodes") or [])
            info = page.get("pageInfo") or {}
        return [n for n in nodes if isinstance(n, dict)]

    def _complete_order(self, order: dict[str, Any]) -> None:
        """Replace the order's nested connections by complete lists of their nodes."""
        gid = str(order.get("id") or "")
        order["lineItems"] = self._rest_of(
            ORDER_LINES_QUERY, gid, "order", "lineItems", order.get("lineItems")
        )
        for refund in order.get("refunds") or []:
            if not isinstance(refund, dict):
                continue
            rid = str(refund.get("id") or "")
            refund["refundLineItems"] = self._rest_of(
                REFUND_LINES_QUERY, rid, "refund", "refundLineItems", refund.get("refundLineItems")
            )
            refund["transactions"] = self._rest_of(
                REFUND_TRANSACTIONS_QUERY, rid, "refund", "transactions", refund.get("transactions")
            )

    def contract_pages(
        self,
        *,
        search: str | None = None,
        after: str | None = None,
        page_size: int = MAX_PAGE_NODES,
        sort_key: str = "ID",
    ) -> Iterator[Page]:
        """Every page of `subscriptionContracts(query: search)` (the contracts this app owns:
        `read_own_subscription_contracts` shows no other). Raises AdminError, AdminAccessDenied
        without the scope.

        Each page asks for as many contracts as fit the budget; a query Shopify still finds
        too dear is halved and asked again. Contracts with more lines than the page holds are
        completed with follow-up queries, so every contract comes back whole.
        """
        cursor = after
        while True:
            first, lines = fit_contracts(self.budget(), page_size)
            variables = {"first": first, "after": cursor, "query": search, "sortKey": sort_key}
            try:
                data = self.query(contracts_query(lines), variables)
            except AdminCostExceeded:
                if first == 1:
                    raise
                self.stats.cost_halvings += 1
                page_size = max(1, first // 2)
                log.warning("admin api query too costly, halved", extra={"contracts": page_size})
                continue
            page = _page(data.get("subscriptionContracts"), self._complete_contract)
            yield page
            if not page.has_next or not page.end_cursor:
                return
            cursor = page.end_cursor

    def contract(self, gid: str) -> dict[str, Any] | None:
        """One subscription contract with all its lines; None when Shopify has none by that id
        this app may see (another app's contract reads as null). Raises AdminError."""
        node = self.query(CONTRACT_QUERY, {"id": gid}).get("subscriptionContract")
        if not isinstance(node, dict):
            return None
        self._complete_contract(node)
        return node

    def _complete_contract(self, contract: dict[str, Any]) -> None:
        contract["lines"] = self._rest_of(
            CONTRACT_LINES_QUERY,
            str(contract.get("id") or ""),
            "subscriptionContract",
            "lines",
            contract.get("lines"),
        )

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

    # --- bulk operations --------------------------------------------------------------------
    def start_bulk(self, search: str | None) -> str:
        """Start the bulk export of orders; returns the operation id. Raises BulkError."""
        data = self.query(BULK_RUN_MUTATION, {"query": bulk_orders_query(search)})
        run = data.get("bulkOperationRunQuery") or {}
        errors = [e for e in run.get("userErrors") or [] if isinstance(e, dict)]
        if errors:
            codes = {str(e.get("code") or "") for e in errors}
            text = " ".join(str(e.get("message") or "") for e in errors).lower()
            if codes & {"OPERATION_IN_PROGRESS", "LIMIT_REACHED"} or "in progress" in text:
                raise BulkError(
                    "the shop already runs as many bulk queries as Shopify allows for this app "
                    "(5 from API 2026-01, 1 before): wait for them to finish, or cancel one, "
                    "then run the same command again"
                )
            raise BulkError(f"Shopify refused the bulk query ({', '.join(sorted(codes))})")
        op = run.get("bulkOperation") or {}
        if not op.get("id"):
            raise BulkError("Shopify started no bulk operation")
        return str(op["id"])

    def bulk_status(self, op_id: str) -> BulkStatus:
        data = self.query(BULK_POLL_QUERY, {"id": op_id})
        op = data.get("bulkOperation")
        if not isinstance(op, dict):
            raise BulkUrlExpired("the bulk operation is gone; run the same command again")

        def count(name: str) -> int | None:
            raw = op.get(name)
            return int(raw) if isinstance(raw, int | str) and str(raw).isdigit() else None

        return BulkStatus(
            id=str(op.get("id") or op_id),
            status=str(op.get("status") or "UNKNOWN"),
            error_code=op.get("errorCode"),
            url=op.get("url"),
            root_count=count("rootObjectCount"),
            object_count=count("objectCount"),
            file_size=count("fileSize"),
        )

    def wait_bulk(
        self, op_id: str, *, first_wait_s: float = 1.0, max_wait_s: float = 60.0
    ) -> BulkStatus:
        """Poll until the operation ends, backing off from 1 s to a minute. Raises BulkError."""
        wait = first_wait_s
        while True:
            status = self.bulk_status(op_id)
            problem = bulk_problem(status)
            if problem is not None:
                raise problem
            if status.status == "COMPLETED":
                return status
            self._pause(wait)
            wait = min(wait * 2, max_wait_s)

    def download(self, url: str, dest: IO[bytes]) -> int:
        """Stream the result file into `dest` (never held in memory); returns bytes written.

        The URL is a signed storage link, so it gets no access token. Raises BulkUrlExpired
        when it is refused (expired) and AdminError on other failures.
        """
        written = 0
        timeout = httpx.Timeout(self.timeout_s, connect=10.0)
        try:
            with (
                httpx.Client(timeout=timeout, transport=self.transport) as plain,
                plain.stream("GET", url) as resp,
            ):
                if resp.status_code in (401, 403, 404, 410):
                    raise BulkUrlExpired(
                        f"the result URL was refused (HTTP {resp.status_code}): it has expired"
                    )
                if resp.status_code >= 400:
                    raise AdminError(f"result download failed: HTTP {resp.status_code}")
                for chunk in resp.iter_bytes(1 << 20):
                    dest.write(chunk)
                    written += len(chunk)
        except httpx.HTTPError as exc:
            raise AdminError(f"result download failed: {type(exc).__name__}") from None
        return written


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
