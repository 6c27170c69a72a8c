"""A loopback stand-in for the Shopify Admin GraphQL API: orders pages, scopes, cost extensions.

Answers the handful of queries `bridge.shopify_admin` sends (recognised by their operation
name), paginates orders with opaque cursors, filters `updated_at:>=`/`<=`, reports a simulated
cost bucket in `extensions.cost.throttleStatus`, and plays scripted faults: `"throttled"` (HTTP
200, a THROTTLED error, `currentlyAvailable` 0) or `"error500"`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "shpat_test_admin_token"
API_VERSION = "2025-07"


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def money(amount: str, currency: str = "USD", presentment: tuple[str, str] | None = None) -> Any:
    p_amount, p_currency = presentment or (amount, currency)
    return {
        "shopMoney": {"amount": amount, "currencyCode": currency},
        "presentmentMoney": {"amount": p_amount, "currencyCode": p_currency},
    }


def gql_order(
    order_id: int,
    *,
    customer_id: int | None,
    email: str | None,
    created: str,
    total: str,
    currency: str = "USD",
    presentment: tuple[str, str] | None = None,
    updated: str | None = None,
    lines: list[tuple[int, str, str, int]] | None = None,
    refunds: list[tuple[int, str, str]] | None = None,
    financial: str = "PAID",
    test: bool = False,
) -> dict[str, Any]:
    """A GraphQL Order node as the Admin API returns it for `ORDER_FIELDS`."""
    customer = None
    if customer_id is not None:
        customer = {
            "id": f"gid://shopify/Customer/{customer_id}",
            "email": email,
            "phone": None,
            "firstName": "Test",
            "lastName": f"Customer{customer_id}",
            "state": "ENABLED",
            "tags": ["vip"],
            "createdAt": "2020-01-01T00:00:00Z",
            "updatedAt": "2020-01-02T00:00:00Z",
            "emailMarketingConsent": {"marketingState": "SUBSCRIBED"},
            "smsMarketingConsent": None,
            "defaultAddress": {"countryCodeV2": "US"},
        }
    return {
        "id": f"gid://shopify/Order/{order_id}",
        "legacyResourceId": str(order_id),
        "name": f"#{order_id}",
        "email": email,
        "phone": None,
        "test": test,
        "createdAt": created,
        "processedAt": created,
        "updatedAt": updated or created,
        "cancelledAt": None,
        "closedAt": None,
        "cancelReason": None,
        "currencyCode": currency,
        "presentmentCurrencyCode": (presentment or (total, currency))[1],
        "displayFinancialStatus": financial,
        "totalPriceSet": money(total, currency, presentment),
        "subtotalPriceSet": money(total, currency, presentment),
        "totalTaxSet": money("0.00", currency),
        "totalDiscountsSet": money("0.00", currency),
        "totalShippingPriceSet": money("0.00", currency),
        "discountCodes": [],
        "customAttributes": [],
        "shippingAddress": {"countryCodeV2": "US"},
        "billingAddress": None,
        "customer": customer,
        "lineItems": {
            "nodes": [
                {
                    "id": f"gid://shopify/LineItem/{order_id}{i}",
                    "name": f"Product {pid}",
                    "title": f"Product {pid}",
                    "quantity": qty,
                    "sku": f"SKU-{pid}",
                    "vendor": "Acme",
                    "variant": {"id": f"gid://shopify/ProductVariant/{pid}0"},
                    "product": {"id": f"gid://shopify/Product/{pid}", "productType": ptype},
                    "originalUnitPriceSet": money(price, currency),
                    "originalTotalSet": money(f"{float(price) * qty:.2f}", currency),
                }
                for i, (pid, ptype, price, qty) in enumerate(lines or [])
            ]
        },
        "refunds": [
            {
                "id": f"gid://shopify/Refund/{rid}",
                "createdAt": at,
                "totalRefundedSet": money(amount, currency),
            }
            for rid, amount, at in refunds or []
        ],
    }


def bulk_lines(orders: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Orders as a bulk operation writes them: children on their own lines after all parents."""
    children = []
    for order in orders:
        top = {k: v for k, v in order.items() if k not in ("lineItems", "refunds")}
        yield top
        for li in order["lineItems"]["nodes"]:
            children.append({**li, "__parentId": order["id"]})
        for refund in order["refunds"]:
            children.append({**refund, "__parentId": order["id"]})
    # Children come after their parent but not right after it.
    yield from children


_FILTER = re.compile(r"updated_at:(>=|<=)'([^']+)'")


class AdminStandIn:
    """A threaded loopback HTTP server answering Admin GraphQL queries over `orders`."""

    def __init__(
        self,
        orders: list[dict[str, Any]] | None = None,
        *,
        scopes: set[str] | None = None,
        products: dict[str, str] | None = None,
        maximum: float = 1000.0,
        restore_rate: float = 1000.0,
    ) -> None:
        self.orders = list(orders or [])
        self.scopes = scopes if scopes is not None else {"read_orders", "read_all_orders"}
        self.products = dict(products or {})
        self.maximum = maximum
        self.restore_rate = restore_rate
        self.faults: list[tuple[str | None, str]] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.answers: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- control ---------------------------------------------------------------------------
    def script(self, *faults: str, op: str | None = None) -> None:
        """Answer the next requests (of operation `op`, or any) with these faults, in order."""
        with self._lock:
            self.faults.extend((op, f) for f in faults)

    def order_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [v for op, v in self.requests if op == "Orders"]

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}/admin/api/{API_VERSION}/graphql.json"

    def __enter__(self) -> AdminStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                status, body = standin.answer(self.headers.get("X-Shopify-Access-Token"), raw)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- answers -----------------------------------------------------------------------------
    def _cost(self, requested: float, available: float) -> dict[str, Any]:
        return {
            "cost": {
                "requestedQueryCost": requested,
                "actualQueryCost": None if available <= 0 else requested,
                "throttleStatus": {
                    "maximumAvailable": self.maximum,
                    "currentlyAvailable": max(available, 0.0),
                    "restoreRate": self.restore_rate,
                },
            }
        }

    def answer(self, token: str | None, raw: bytes) -> tuple[int, dict[str, Any]]:
        if token != TOKEN:
            return 401, {"errors": "[API] Invalid API key or access token"}
        req = json.loads(raw)
        query: str = req.get("query") or ""
        variables: dict[str, Any] = req.get("variables") or {}
        m = re.search(r"query\s+(\w+)", query)
        op = m.group(1) if m else "?"
        cost = float(variables.get("first") or 1) + 2
        with self._lock:
            self.requests.append((op, variables))
            fault = None
            for i, (want, name) in enumerate(self.faults):
                if want is None or want == op:
                    fault = name
                    del self.faults[i]
                    break
        if fault == "throttled":
            self.answers.append("throttled")
            return 200, {
                "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                "extensions": self._cost(cost, 0.0),
            }
        if fault == "error500":
            self.answers.append("error500")
            return 500, {"errors": "Internal Server Error"}
        self.answers.append("ok")
        ext = self._cost(cost, self.maximum - cost)
        if op == "Scopes":
            scopes = [{"handle": s} for s in sorted(self.scopes)]
            data = {"currentAppInstallation": {"accessScopes": scopes}}
            return 200, {"data": data, "extensions": ext}
        if op == "Oldest":
            nodes = sorted(self.orders, key=lambda o: _when(o["createdAt"]))[:1]
            oldest = [{"id": n["id"], "createdAt": n["createdAt"]} for n in nodes]
            data = {"orders": {"nodes": oldest}}
            return 200, {"data": data, "extensions": ext}
        if op == "OrdersCount":
            count = {"count": len(self._matching(variables.get("query"))), "precision": "EXACT"}
            return 200, {"data": {"ordersCount": count}, "extensions": ext}
        if op == "ProductTypes":
            nodes = []
            for gid in variables.get("ids") or []:
                pid = str(gid).rsplit("/", 1)[-1]
                nodes.append({"id": gid, "productType": self.products.get(pid, "")})
            return 200, {"data": {"nodes": nodes}, "extensions": ext}
        if op == "Orders":
            return 200, {"data": {"orders": self._page(variables)}, "extensions": ext}
        return 200, {"errors": [{"message": f"unknown operation {op}"}]}

    def _matching(self, search: str | None) -> list[dict[str, Any]]:
        out = self.orders
        for cmp, value in _FILTER.findall(search or ""):
            bound = _when(value)
            if cmp == ">=":
                out = [o for o in out if _when(o["updatedAt"]) >= bound]
            else:
                out = [o for o in out if _when(o["updatedAt"]) <= bound]
        return out

    def _page(self, variables: dict[str, Any]) -> dict[str, Any]:
        orders = self._matching(variables.get("query"))
        if variables.get("sortKey") == "UPDATED_AT":
            orders = sorted(orders, key=lambda o: _when(o["updatedAt"]))
        else:
            orders = sorted(orders, key=lambda o: int(o["legacyResourceId"]))
        after = variables.get("after")
        start = int(str(after).split(":", 1)[1]) if after else 0
        first = int(variables.get("first") or 50)
        nodes = orders[start : start + first]
        end = start + len(nodes)
        return {
            "pageInfo": {
                "hasNextPage": end < len(orders),
                "endCursor": f"c:{end}" if nodes else None,
            },
            "nodes": nodes,
        }
