"""A loopback stand-in for the Shopify Admin GraphQL API that enforces Shopify's published rules.

Written from `shared/docs/shopify-admin-api.md`, not from the bridge's client:

- **Cost.** The requested cost of every query is worked out from its text (scalar 0, object 1,
  connection 2 + first x node, fragments the most expensive branch, mutation 10). A query over
  1 000 points is refused with `MAX_COST_EXCEEDED` and no data, whatever the bucket holds.
- **Sizes.** A connection's `first`/`last` over 250, or `nodes(ids:)` with over 250 ids, is
  refused before it runs (errors, no data): the ids one with Shopify's wording and
  `MAX_INPUT_SIZE_EXCEEDED`, the page one with the doc's limit [U: its wording and code].
- **Cursors.** Opaque (base64 JSON naming a position, the sort and a generation), as Shopify's
  are. A cursor that does not decode, was issued for another sort, or was issued before
  `invalidate_cursors()` (how a test makes Shopify refuse a saved cursor, e.g. after bulk
  edits: the doc does not say when it does) is refused with `Invalid cursor for current
  pagination sort.`, no data.
- **Bucket.** A leaky bucket per plan (`PLANS`) drains by the requested cost up front, refunds
  requested - actual afterwards and refills at the plan's restore rate in real time. When it
  cannot hold the requested cost the answer is `THROTTLED` (HTTP 200, no data).
- **Versions.** The version in the URL answers when supported; any other is served by the oldest
  supported version (fall-forward), named in `X-Shopify-API-Version`.
- **Bulk operations.** `bulkOperationRunQuery` checks the query rules (one top-level field, 1-5
  connections, nested at most 2 deep), the concurrency limit (5 from 2026-01, 1 before), moves
  CREATED -> RUNNING -> COMPLETED as it is polled (or to a scripted terminal state) and serves
  the JSONL at a URL that can expire. Child lines carry `__parentId` and are shuffled: a child
  may come before its parent, as from 2026-01.

- **Subscription contracts** (`subscriptionContracts`, `subscriptionContract`). Both need the
  `read_own_subscription_contracts` scope (else ACCESS_DENIED, no data), and an app sees only
  the contracts it created: another app's contract is not listed and reads as null. The list
  filters by `updated_at`/`created_at` and `status` in `query:` and sorts by CREATED_AT (the
  default), UPDATED_AT or ID; `lines` is a connection.

- **Products** (`products`, `product`, `nodes(ids:)`), issue 17: product nodes as
  `gql_product` builds them, with `productType`, `vendor`, a Standard Product Taxonomy
  `category { id name fullName }` (or null) and metafields read by
  `metafield(namespace:, key:) { value type }` (null when unset). `products` filters by
  `updated_at` in `query:` and sorts by ID (the default) or UPDATED_AT. `nodes(ids:)` answers
  null for an id it does not know, and costs one object per id (the doc leaves lists' cost
  open; this is the upper bound).

The data is a graph of plain dicts (orders as `gql_order` builds them, contracts as
`gql_contract`); a small executor answers any selection over it, with real paging of
connections and per-connection `pageInfo`.
"""

from __future__ import annotations

import base64
import json
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from graphql import GraphQLError, parse
from graphql.language import (
    BooleanValueNode,
    EnumValueNode,
    FieldNode,
    FloatValueNode,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    NullValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    ValueNode,
    VariableNode,
)

TOKEN = "shpat_test_admin_token"
API_VERSION = "2026-10"
# Stable versions Shopify still supports (12-month window); anything else falls forward.
SUPPORTED_VERSIONS = ("2025-10", "2026-01", "2026-04", "2026-07", "2026-10")

MAX_COST = 1000
MUTATION_COST = 10
MAX_PAGE = 250  # nodes per connection page (`first`/`last`)
MAX_INPUT_ITEMS = 250  # items per input array (`nodes(ids:)`)
# What Shopify answers for a cursor it will not page from (seen in apps' error handling; the
# doc does not list it) [U: its extensions code].
INVALID_CURSOR = "Invalid cursor for current pagination sort."


@dataclass(frozen=True)
class Plan:
    maximum: float  # bucket size (`maximumAvailable`)
    restore_rate: float  # points per second


# Restore rates from the current docs; bucket sizes as seen in responses (not documented).
PLANS = {
    "standard": Plan(2000.0, 100.0),
    "advanced": Plan(4000.0, 200.0),
    "plus": Plan(20000.0, 1000.0),
    "enterprise": Plan(40000.0, 2000.0),
}

# Fields that are connections in the Admin schema (cost 2 + first x node, paged, own JSONL
# lines in bulk output). `refunds` is a plain list: one object, inline in bulk output.
CONNECTIONS = frozenset(
    {
        "orders",
        "lineItems",
        "refundLineItems",
        "transactions",
        "products",
        "variants",
        "subscriptionContracts",
        "lines",
    }
)
# The scope every subscription contract query needs; an app reads only its own contracts.
CONTRACTS_SCOPE = "read_own_subscription_contracts"
CONTRACT_ROOTS = frozenset({"subscriptionContracts", "subscriptionContract"})
THIS_APP = "gid://shopify/App/1"
OTHER_APP = "gid://shopify/App/2"


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
    refund_lines: dict[int, list[tuple[int, int]]] | None = None,
    financial: str = "PAID",
    test: bool = False,
) -> dict[str, Any]:
    """A GraphQL Order node with every field the Admin API has for it (connections as lists).

    `lines` are (product id, product type, unit price, quantity); `refunds` are (refund id,
    amount, created at); `refund_lines` maps a refund id to (line index, quantity) pairs.
    """
    customer = None
    if customer_id is not None:
        customer = {
            "id": f"gid://shopify/Customer/{customer_id}",
            "legacyResourceId": str(customer_id),
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
    line_items = [
        {
            "id": f"gid://shopify/LineItem/{order_id}{i:03d}",
            "name": f"Product {pid}",
            "title": f"Product {pid}",
            "quantity": qty,
            "sku": f"SKU-{pid}",
            "vendor": "Acme",
            "variant": {"id": f"gid://shopify/ProductVariant/{pid}0"},
            "product": {"id": f"gid://shopify/Product/{pid}", "productType": ptype},
            "originalUnitPriceSet": money(price, currency),
            "originalTotalSet": money(f"{float(price) * qty:.2f}", currency),
            "sellingPlan": None,
        }
        for i, (pid, ptype, price, qty) in enumerate(lines or [])
    ]
    refund_objs = []
    for rid, amount, at in refunds or []:
        rlis = []
        for index, qty in (refund_lines or {}).get(rid, []):
            li = line_items[index]
            unit = li["originalUnitPriceSet"]["shopMoney"]["amount"]
            rlis.append(
                {
                    "id": f"gid://shopify/RefundLineItem/{rid}{index:03d}",
                    "quantity": qty,
                    "lineItem": li,
                    "subtotalSet": money(f"{float(unit) * qty:.2f}", currency),
                }
            )
        refund_objs.append(
            {
                "id": f"gid://shopify/Refund/{rid}",
                "legacyResourceId": str(rid),
                "createdAt": at,
                "note": None,
                "totalRefundedSet": money(amount, currency),
                "refundLineItems": rlis,
                "transactions": [
                    {
                        "id": f"gid://shopify/OrderTransaction/{rid}1",
                        "kind": "REFUND",
                        "status": "SUCCESS",
                        "amountSet": money(amount, currency),
                    }
                ],
            }
        )
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
        "currentTotalPriceSet": money(total, currency, presentment),
        "totalTaxSet": money("0.00", currency),
        "totalDiscountsSet": money("0.00", currency),
        "totalShippingPriceSet": money("0.00", currency),
        "discountCodes": [],
        "customAttributes": [],
        "shippingAddress": {"countryCodeV2": "US"},
        "billingAddress": None,
        "customer": customer,
        "lineItems": line_items,
        "refunds": refund_objs,
    }


def gql_contract(
    contract_id: int,
    *,
    customer_id: int | None,
    email: str | None,
    created: str,
    updated: str | None = None,
    status: str = "ACTIVE",
    revision: int = 1,
    next_billing: str | None = None,
    currency: str = "USD",
    interval: str = "MONTH",
    interval_count: int = 1,
    origin_order_id: int | None = None,
    lines: list[tuple[int, str, str, int]] | None = None,
    last_payment: str | None = "SUCCEEDED",
    app: str = THIS_APP,
) -> dict[str, Any]:
    """A GraphQL SubscriptionContract node with the Admin API's fields (lines as a list).

    `lines` are (product id, title, unit price, quantity); `revisionId` is an UnsignedInt64,
    which GraphQL serialises as a string; `app` is the subscription app that owns it."""
    customer = None
    if customer_id is not None:
        customer = {
            "id": f"gid://shopify/Customer/{customer_id}",
            "legacyResourceId": str(customer_id),
            "email": email,
            "firstName": "Sub",
            "lastName": f"Scriber{customer_id}",
        }
    line_nodes = [
        {
            "id": f"gid://shopify/SubscriptionLine/{contract_id}{i:03d}",
            "productId": f"gid://shopify/Product/{pid}",
            "variantId": f"gid://shopify/ProductVariant/{pid}0",
            "sku": f"SKU-{pid}",
            "title": title,
            "variantTitle": None,
            "quantity": qty,
            "currentPrice": {"amount": price, "currencyCode": currency},
            "lineDiscountedPrice": {
                "amount": f"{float(price) * qty:.2f}",
                "currencyCode": currency,
            },
            "sellingPlanId": "gid://shopify/SellingPlan/900",
            "sellingPlanName": "Delivered monthly",
            "requiresShipping": True,
            "taxable": True,
        }
        for i, (pid, title, price, qty) in enumerate(lines or [])
    ]
    return {
        "id": f"gid://shopify/SubscriptionContract/{contract_id}",
        "app": {"id": app},
        "status": status,
        "revisionId": str(revision),
        "createdAt": created,
        "updatedAt": updated or created,
        "nextBillingDate": next_billing,
        "currencyCode": currency,
        "lastPaymentStatus": last_payment,
        "lastBillingAttemptErrorType": None,
        "note": None,
        "customer": customer,
        "billingPolicy": {
            "interval": interval,
            "intervalCount": interval_count,
            "minCycles": None,
            "maxCycles": None,
        },
        "deliveryPolicy": {"interval": interval, "intervalCount": interval_count},
        "deliveryPrice": {"amount": "0.00", "currencyCode": currency},
        "originOrder": (
            {"id": f"gid://shopify/Order/{origin_order_id}", "name": f"#{origin_order_id}"}
            if origin_order_id is not None
            else None
        ),
        "linesCount": {"count": len(line_nodes), "precision": "EXACT"},
        "lines": line_nodes,
    }


def gql_product(
    product_id: int,
    *,
    product_type: str = "",
    vendor: str = "Acme",
    category: str | None = None,
    metafields: dict[str, tuple[str, str]] | None = None,
    updated: str = "2026-01-01T00:00:00Z",
) -> dict[str, Any]:
    """A GraphQL Product node. `category` is a taxonomy category's name (its full name is made
    up around it); `metafields` maps `namespace.key` to (value, type), values as strings, as
    the Admin API always returns them."""
    return {
        "id": f"gid://shopify/Product/{product_id}",
        "legacyResourceId": str(product_id),
        "title": f"Product {product_id}",
        "handle": f"product-{product_id}",
        "productType": product_type,
        "vendor": vendor,
        "tags": [],
        "status": "ACTIVE",
        "createdAt": "2025-01-01T00:00:00Z",
        "updatedAt": updated,
        "category": (
            {
                "id": "gid://shopify/TaxonomyCategory/hb-1-9",
                "name": category,
                "fullName": f"Health & Beauty > {category}",
            }
            if category
            else None
        ),
        "metafields": [
            {"namespace": k.partition(".")[0], "key": k.partition(".")[2], "value": v, "type": t}
            for k, (v, t) in (metafields or {}).items()
        ],
    }


def bulk_lines(orders: list[dict[str, Any]], seed: int = 7) -> Iterator[dict[str, Any]]:
    """Orders as a bulk operation writes them (every field), children shuffled among parents."""
    lines: list[dict[str, Any]] = []
    for order in orders:
        top = {k: v for k, v in order.items() if k != "lineItems"}
        top["refunds"] = [
            {k: v for k, v in r.items() if k not in CONNECTIONS} for r in order["refunds"]
        ]
        lines.append(top)
        lines.extend({**li, "__parentId": order["id"]} for li in order["lineItems"])
        for refund in order["refunds"]:
            for name in ("refundLineItems", "transactions"):
                lines.extend({**c, "__parentId": refund["id"]} for c in refund[name])
    # No ordering guarantee (groupObjects: false, the default from 2026-01).
    random.Random(seed).shuffle(lines)
    yield from lines


# --- cost, from the query text ------------------------------------------------------------------


def _value(node: ValueNode, variables: dict[str, Any]) -> Any:
    if isinstance(node, VariableNode):
        return variables.get(node.name.value)
    if isinstance(node, IntValueNode):
        return int(node.value)
    if isinstance(node, FloatValueNode):
        return float(node.value)
    if isinstance(node, StringValueNode | EnumValueNode):
        return node.value
    if isinstance(node, BooleanValueNode):
        return node.value
    if isinstance(node, NullValueNode):
        return None
    if isinstance(node, ListValueNode):
        return [_value(v, variables) for v in node.values]
    return None


def _args(f: FieldNode, variables: dict[str, Any]) -> dict[str, Any]:
    return {a.name.value: _value(a.value, variables) for a in f.arguments or ()}


def _fields(sel: SelectionSetNode | None) -> Iterator[FieldNode]:
    """Fields of a selection, with inline fragments flattened (every type matches here)."""
    for node in sel.selections if sel else ():
        if isinstance(node, FieldNode):
            yield node
        elif isinstance(node, InlineFragmentNode):
            yield from _fields(node.selection_set)


def cost_of(sel: SelectionSetNode | None, variables: dict[str, Any]) -> int:
    if sel is None:
        return 0
    total = 0
    branches = [0]
    for node in sel.selections:
        if isinstance(node, InlineFragmentNode):
            branches.append(cost_of(node.selection_set, variables))
            continue
        if not isinstance(node, FieldNode) or node.selection_set is None:
            continue  # scalars and enums are free
        name = node.name.value
        if name in CONNECTIONS:
            first = _args(node, variables).get("first") or _args(node, variables).get("last") or 0
            per_node, once = 1, 0
            for sub in node.selection_set.selections:
                if isinstance(sub, FieldNode) and sub.name.value == "nodes":
                    per_node += cost_of(sub.selection_set, variables)
                elif isinstance(sub, FieldNode) and sub.name.value == "edges":
                    for e in _fields(sub.selection_set):
                        if e.name.value == "node":
                            per_node += cost_of(e.selection_set, variables)
                elif isinstance(sub, FieldNode) and sub.name.value == "pageInfo":
                    once += 1
                elif isinstance(sub, FieldNode):
                    per_node += cost_of(SelectionSetNode(selections=(sub,)), variables)
            total += 2 + int(first) * per_node + once
        elif "ids" in _args(node, variables):
            # `nodes(ids:)`: one object (and its fields) per id asked for.
            ids = _args(node, variables).get("ids") or []
            count = len(ids) if isinstance(ids, list) else 1
            total += max(1, count) * (1 + cost_of(node.selection_set, variables))
        else:
            total += 1 + cost_of(node.selection_set, variables)
    return total + max(branches)


def actual_cost(sel: SelectionSetNode | None, data: Any) -> int:
    """What the answer really cost: the same rules with the nodes returned instead of `first`."""
    if sel is None or not isinstance(data, dict):
        return 0
    total = 0
    for f in _fields(sel):
        if f.selection_set is None:
            continue
        value = data.get(f.alias.value if f.alias else f.name.value)
        if f.name.value in CONNECTIONS and isinstance(value, dict):
            nodes = value.get("nodes") or [e.get("node") for e in value.get("edges") or []]
            node_sel = next(
                (x.selection_set for x in _fields(f.selection_set) if x.name.value == "nodes"),
                None,
            )
            total += 2 + sum(1 + actual_cost(node_sel, n) for n in nodes)
            total += 1 if "pageInfo" in value else 0
        elif isinstance(value, list) and f.name.value == "nodes":
            total += sum(1 + actual_cost(f.selection_set, v) for v in value if v is not None)
        elif isinstance(value, list):
            total += 1 + max((actual_cost(f.selection_set, v) for v in value), default=0)
        elif isinstance(value, dict):
            total += 1 + actual_cost(f.selection_set, value)
    return total


# --- executing a selection over the data graph ------------------------------------------------


class Refused(Exception):
    """A query Shopify refuses as a whole: `errors` with this message, path and code, no data."""

    def __init__(self, message: str, path: list[str], code: str) -> None:
        super().__init__(message)
        self.message, self.path, self.code = message, path, code

    def error(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "locations": [{"line": 2, "column": 3}],
            "path": self.path,
            "extensions": {"code": self.code},
        }


def cursor(position: int, sort: str, generation: int) -> str:
    """An opaque cursor, like Shopify's base64 JSON: the position after a node, for one sort
    order, from one generation of the stand-in's cursors (`invalidate_cursors`)."""
    raw = json.dumps({"last_id": position, "sort": sort, "g": generation})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def cursor_position(text: str | None) -> int | None:
    """The position a cursor of this stand-in names (for tests), None for none."""
    if text is None:
        return None
    return int(json.loads(base64.urlsafe_b64decode(text.encode()))["last_id"])


def _start(after: Any, sort: str, generation: int, field: str) -> int:
    """Where a page after this cursor starts; Refused when the cursor is not one of this sort
    and generation (garbled, from another sort, or issued before `invalidate_cursors`)."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(str(after).encode()))
        ok = raw["sort"] == sort and raw["g"] == generation and int(raw["last_id"]) >= 0
        position = int(raw["last_id"])
    except (ValueError, KeyError, TypeError):
        ok, position = False, 0
    if not ok:
        raise Refused(INVALID_CURSOR, [field], "BAD_REQUEST")
    return position


def _page(
    items: list[Any], args: dict[str, Any], generation: int = 0, field: str = ""
) -> tuple[list[Any], int, int]:
    after = args.get("after")
    sort = str(args.get("sortKey") or "ID")
    start = _start(after, sort, generation, field) if after else 0
    first = args.get("first")
    end = len(items) if first is None else start + min(int(first), MAX_PAGE)
    return items[start:end], start, min(end, len(items))


def check_limits(sel: SelectionSetNode | None, variables: dict[str, Any]) -> None:
    """Refused when a connection asks for more than 250 nodes or `nodes(ids:)` for more than 250
    ids, as Shopify refuses them before running the query (whatever the query costs)."""
    for f in _fields(sel):
        args = _args(f, variables)
        for name in ("first", "last"):
            size = args.get(name)
            if isinstance(size, int) and size > MAX_PAGE:
                # [U: the wording and code; the limit is the doc's (section 2)]
                raise Refused(
                    f"The {name} argument of {f.name.value} may not exceed {MAX_PAGE} "
                    f"(asked for {size}).",
                    [f.name.value],
                    "BAD_REQUEST",
                )
        ids = args.get("ids")
        if isinstance(ids, list) and len(ids) > MAX_INPUT_ITEMS:
            # As Shopify words it for any input list over the limit.
            raise Refused(
                f"The input array size of {len(ids)} is greater than the maximum allowed of "
                f"{MAX_INPUT_ITEMS}.",
                [f.name.value, "ids"],
                "MAX_INPUT_SIZE_EXCEEDED",
            )
        check_limits(f.selection_set, variables)


def execute(
    sel: SelectionSetNode | None, obj: Any, variables: dict[str, Any], generation: int = 0
) -> Any:
    if sel is None or not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for f in _fields(sel):
        key = f.alias.value if f.alias else f.name.value
        name = f.name.value
        value = obj.get(name)
        if name == "metafield" and isinstance(obj.get("metafields"), list):
            args = _args(f, variables)
            value = next(
                (
                    m
                    for m in obj["metafields"]
                    if m["namespace"] == args.get("namespace") and m["key"] == args.get("key")
                ),
                None,
            )
        if name in CONNECTIONS and isinstance(value, list):
            args = _args(f, variables)
            nodes, start, end = _page(value, args, generation, name)
            sort = str(args.get("sortKey") or "ID")
            conn: dict[str, Any] = {}
            for sub in _fields(f.selection_set):
                if sub.name.value == "nodes":
                    conn["nodes"] = [
                        execute(sub.selection_set, n, variables, generation) for n in nodes
                    ]
                elif sub.name.value == "edges":
                    conn["edges"] = [
                        execute(
                            sub.selection_set,
                            {"node": n, "cursor": cursor(start + i + 1, sort, generation)},
                            {},
                            generation,
                        )
                        for i, n in enumerate(nodes)
                    ]
                elif sub.name.value == "pageInfo":
                    info = {
                        "hasNextPage": end < len(value),
                        "hasPreviousPage": start > 0,
                        "endCursor": cursor(end, sort, generation) if nodes else None,
                        "startCursor": cursor(start + 1, sort, generation) if nodes else None,
                    }
                    conn["pageInfo"] = execute(sub.selection_set, info, variables, generation)
            out[key] = conn
        elif isinstance(value, list):
            out[key] = [execute(f.selection_set, v, variables, generation) for v in value]
        else:
            out[key] = execute(f.selection_set, value, variables, generation)
    return out


# --- bulk operations ---------------------------------------------------------------------------


@dataclass
class BulkOp:
    gid: str
    query: str
    status: str = "CREATED"
    error_code: str | None = None
    polls: int = 0
    outcome: tuple[str, str | None] = ("COMPLETED", None)
    jsonl: bytes = b""
    root_count: int = 0
    object_count: int = 0
    expired: bool = False
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _connection_depths(sel: SelectionSetNode | None, depth: int = 0) -> list[int]:
    found: list[int] = []
    for f in _fields(sel):
        here = depth
        if f.name.value in CONNECTIONS:
            here = depth + 1
            found.append(here)
        found.extend(_connection_depths(f.selection_set, here))
    return found


def check_bulk_query(text: str) -> str | None:
    """Why Shopify would refuse this bulk query, or None."""
    try:
        doc = parse(text)
    except GraphQLError as exc:
        return f"Invalid bulk query: {exc.message}"
    ops = [d for d in doc.definitions if isinstance(d, OperationDefinitionNode)]
    if len(ops) != 1:
        return "Invalid bulk query: exactly one operation"
    top = list(_fields(ops[0].selection_set))
    if len(top) != 1 or top[0].name.value in ("node", "nodes"):
        return "Bulk queries must contain exactly one top-level field, not node or nodes"
    depths = _connection_depths(ops[0].selection_set)
    if not 1 <= len(depths) <= 5:
        return "Bulk queries must contain at least one and at most five connections"
    if max(depths) > 2:
        return "Bulk queries cannot contain connections with a nesting depth greater than 2"
    return None


def _strip_connections(sel: SelectionSetNode | None, obj: Any, parent: str | None) -> Any:
    """One object's own JSONL line: connections left out (they get lines of their own)."""
    if sel is None or not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for f in _fields(sel):
        key = f.alias.value if f.alias else f.name.value
        if f.name.value in CONNECTIONS:
            continue
        value = obj.get(f.name.value)
        if isinstance(value, list):
            out[key] = [_strip_connections(f.selection_set, v, None) for v in value]
        else:
            out[key] = _strip_connections(f.selection_set, value, None)
    if parent is not None:
        out["__parentId"] = parent
    return out


def _child_lines(sel: SelectionSetNode | None, obj: Any) -> Iterator[dict[str, Any]]:
    """Lines of every connection node under `obj` (inline lists searched too)."""
    if sel is None or not isinstance(obj, dict):
        return
    for f in _fields(sel):
        value = obj.get(f.name.value)
        if f.name.value in CONNECTIONS and isinstance(value, list):
            node_sel = next(
                (s.selection_set for s in _fields(f.selection_set) if s.name.value == "nodes"),
                None,
            )
            if node_sel is None:
                for e in _fields(f.selection_set):
                    if e.name.value == "edges":
                        node_sel = next((n.selection_set for n in _fields(e.selection_set)), None)
            for node in value:
                yield _strip_connections(node_sel, node, obj.get("id"))
                yield from _child_lines(node_sel, node)
        elif isinstance(value, list):
            for v in value:
                yield from _child_lines(f.selection_set, v)
        elif isinstance(value, dict):
            yield from _child_lines(f.selection_set, value)


# --- the server ------------------------------------------------------------------------------


class AdminStandIn:
    """A threaded loopback HTTP server answering Admin GraphQL queries over `orders`."""

    def __init__(
        self,
        orders: list[dict[str, Any]] | None = None,
        *,
        contracts: list[dict[str, Any]] | None = None,
        scopes: set[str] | None = None,
        products: dict[str, str] | None = None,
        catalog: list[dict[str, Any]] | None = None,
        plan: Plan = PLANS["plus"],
        bulk_polls: int = 2,
        seed: int = 7,
    ) -> None:
        self.orders = list(orders or [])
        self.contracts = list(contracts or [])
        self.scopes = scopes if scopes is not None else {"read_orders", "read_all_orders"}
        self.products = dict(products or {})
        # Product nodes (`gql_product`), by GID: `products`, `product` and `nodes` read them.
        self.catalog = {p["id"]: p for p in catalog or []}
        self.plan = plan
        self.available = plan.maximum
        self._filled_at = time.monotonic()
        self.bulk_polls = bulk_polls  # polls a bulk operation stays CREATED/RUNNING
        self.seed = seed
        self.bulk: dict[str, BulkOp] = {}
        self.bulk_outcomes: list[tuple[str, str | None]] = []
        self.downloads: list[str] = []
        self.faults: list[tuple[str | None, str]] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.queries: list[str] = []
        self.answers: list[str] = []
        self.costs: list[int] = []
        self.versions: list[str] = []
        # Cursors carry this; `invalidate_cursors` moves it on, so every cursor issued before is
        # refused as Shopify may refuse a saved one (after bulk edits, a sort change...).
        self.cursor_generation = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- control ---------------------------------------------------------------------------
    def script(self, *faults: str, op: str | None = None) -> None:
        """Answer the next requests (of operation `op`, or any) with these faults, in order."""
        with self._lock:
            self.faults.extend((op, f) for f in faults)

    def finish_next_bulk(self, status: str, error_code: str | None = None) -> None:
        """The next bulk operation ends in this state (FAILED, CANCELED, EXPIRED...)."""
        with self._lock:
            self.bulk_outcomes.append((status, error_code))

    def expire_bulk(self) -> None:
        """Every finished operation's URL has expired (Shopify keeps them 7 days)."""
        with self._lock:
            for op in self.bulk.values():
                op.expired = True
                if op.status == "COMPLETED":
                    op.status = "EXPIRED"

    def invalidate_cursors(self) -> None:
        """Every cursor issued so far is refused from now on (`Invalid cursor ...`)."""
        with self._lock:
            self.cursor_generation += 1

    def order_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [v for op, v in self.requests if op == "Orders"]

    def requests_of(self, op: str) -> list[dict[str, Any]]:
        """The variables of every request of the named operation, in order."""
        with self._lock:
            return [v for name, v in self.requests if name == op]

    @property
    def base(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url_for(self, version: str) -> str:
        return f"{self.base}/admin/api/{version}/graphql.json"

    @property
    def url(self) -> str:
        return self.url_for(API_VERSION)

    def __enter__(self) -> AdminStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, data: bytes, ctype: str, version: str = "") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                if version:
                    self.send_header("X-Shopify-API-Version", version)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                status, data = standin.download(self.path)
                self._send(status, data, "application/jsonl")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                m = re.match(r"/admin/api/([^/]+)/graphql\.json", self.path)
                asked = m.group(1) if m else ""
                version = asked if asked in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[0]
                status, body = standin.answer(
                    self.headers.get("X-Shopify-Access-Token"), raw, version
                )
                self._send(status, json.dumps(body).encode(), "application/json", version)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- the bucket --------------------------------------------------------------------------
    def _refill(self) -> None:
        now = time.monotonic()
        self.available = min(
            self.plan.maximum, self.available + (now - self._filled_at) * self.plan.restore_rate
        )
        self._filled_at = now

    def _cost(self, requested: int, actual: int | None) -> dict[str, Any]:
        return {
            "cost": {
                "requestedQueryCost": requested,
                "actualQueryCost": actual,
                "throttleStatus": {
                    "maximumAvailable": self.plan.maximum,
                    "currentlyAvailable": int(self.available),
                    "restoreRate": self.plan.restore_rate,
                },
            }
        }

    # --- answers -----------------------------------------------------------------------------
    def answer(
        self, token: str | None, raw: bytes, version: str = API_VERSION
    ) -> tuple[int, dict[str, Any]]:
        if token != TOKEN:
            return 401, {"errors": "[API] Invalid API key or access token"}
        req = json.loads(raw)
        query: str = req.get("query") or ""
        variables: dict[str, Any] = req.get("variables") or {}
        try:
            doc = parse(query)
        except GraphQLError as exc:
            return 200, {"errors": [{"message": exc.message}]}
        (operation,) = [d for d in doc.definitions if isinstance(d, OperationDefinitionNode)]
        op = operation.name.value if operation.name else "?"
        mutation = operation.operation == OperationType.MUTATION
        requested = MUTATION_COST if mutation else cost_of(operation.selection_set, variables)
        with self._lock:
            self.requests.append((op, variables))
            self.queries.append(query)
            self.costs.append(requested)
            self.versions.append(version)
            fault = None
            for i, (want, name) in enumerate(self.faults):
                if want is None or want == op:
                    fault = name
                    del self.faults[i]
                    break
            self._refill()
            if requested > MAX_COST:
                self.answers.append("max_cost")
                message = (
                    f"Query cost is {requested}, which exceeds the single query max cost "
                    f"limit ({MAX_COST})."
                )
                return 200, {
                    "errors": [{"message": message, "extensions": {"code": "MAX_COST_EXCEEDED"}}],
                    "extensions": self._cost(requested, None),
                }
            try:
                check_limits(operation.selection_set, variables)
            except Refused as exc:
                self.answers.append("refused")
                return 200, {"errors": [exc.error()], "extensions": self._cost(requested, None)}
            if fault == "throttled":
                self.available = 0.0
            if fault == "max_cost":
                # Shopify's static figure can exceed a client's (community reports differ).
                self.answers.append("max_cost")
                return 200, {
                    "errors": [
                        {
                            "message": "Query cost exceeds 1000",
                            "extensions": {"code": "MAX_COST_EXCEEDED"},
                        }
                    ],
                    "extensions": self._cost(requested, None),
                }
            if fault == "error500":
                self.answers.append("error500")
                return 500, {"errors": "Internal Server Error"}
            roots = {f.name.value for f in _fields(operation.selection_set)}
            if roots & CONTRACT_ROOTS and CONTRACTS_SCOPE not in self.scopes:
                self.answers.append("access_denied")
                field_name = sorted(roots & CONTRACT_ROOTS)[0]
                return 200, {
                    "errors": [
                        {
                            "message": f"Access denied for {field_name} field. Required "
                            f"access: `{CONTRACTS_SCOPE}` access scope.",
                            "extensions": {"code": "ACCESS_DENIED"},
                        }
                    ],
                    "extensions": self._cost(requested, None),
                }
            if self.available < requested:
                self.answers.append("throttled")
                return 200, {
                    "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                    "extensions": self._cost(requested, None),
                }
            self.available -= requested
            try:
                data = self._data(operation, variables, version)
            except Refused as exc:
                self.available += requested  # refused before it ran: nothing charged [U]
                self.answers.append("refused")
                return 200, {"errors": [exc.error()], "extensions": self._cost(requested, None)}
            self.answers.append("ok")
            # Charged the requested cost up front; what was not used comes back.
            actual = min(requested, actual_cost(operation.selection_set, data))
            self.available += requested - actual
            return 200, {"data": data, "extensions": self._cost(requested, actual)}

    def _root(self, name: str, args: dict[str, Any], version: str) -> Any:
        if name == "orders":
            orders = self._matching(args.get("query"))
            if args.get("sortKey") == "UPDATED_AT":
                return sorted(orders, key=lambda o: _when(o["updatedAt"]))
            if args.get("sortKey") == "CREATED_AT":
                return sorted(orders, key=lambda o: _when(o["createdAt"]))
            return sorted(orders, key=lambda o: int(o["legacyResourceId"]))
        if name == "order":
            return next((o for o in self.orders if o["id"] == args.get("id")), None)
        if name == "refund":
            refunds = (r for o in self.orders for r in o["refunds"])
            return next((r for r in refunds if r["id"] == args.get("id")), None)
        if name == "subscriptionContracts":
            mine = self._matching(args.get("query"), self._own_contracts())
            key = args.get("sortKey") or "CREATED_AT"
            if key == "UPDATED_AT":
                mine = sorted(mine, key=lambda c: _when(c["updatedAt"]))
            elif key == "ID":
                mine = sorted(mine, key=lambda c: int(c["id"].rsplit("/", 1)[1]))
            else:
                mine = sorted(mine, key=lambda c: _when(c["createdAt"]))
            return list(reversed(mine)) if args.get("reverse") else mine
        if name == "subscriptionContract":
            return next((c for c in self._own_contracts() if c["id"] == args.get("id")), None)
        if name == "ordersCount":
            return {"count": len(self._matching(args.get("query"))), "precision": "EXACT"}
        if name == "currentAppInstallation":
            return {"accessScopes": [{"handle": s} for s in sorted(self.scopes)]}
        if name == "nodes":
            out = []
            for gid in args.get("ids") or []:
                pid = str(gid).rsplit("/", 1)[-1]
                if gid in self.catalog:
                    out.append(self.catalog[gid])
                elif pid in self.products or not self.catalog:
                    out.append({"id": gid, "productType": self.products.get(pid, "")})
                else:
                    out.append(None)  # no such product: Shopify answers null for its id
            return out
        if name == "product":
            return self.catalog.get(str(args.get("id")))
        if name == "products":
            products = self._matching(args.get("query"), list(self.catalog.values()))
            if args.get("sortKey") == "UPDATED_AT":
                products = sorted(products, key=lambda p: (_when(p["updatedAt"]), p["id"]))
            else:
                products = sorted(products, key=lambda p: int(p["legacyResourceId"]))
            return list(reversed(products)) if args.get("reverse") else products
        if name == "bulkOperation":
            bulk = self.bulk.get(str(args.get("id")))
            return self._poll(bulk) if bulk else None
        if name == "bulkOperationRunQuery":
            return self._run_bulk(str(args.get("query") or ""), version)
        if name == "bulkOperationCancel":
            bulk = self.bulk.get(str(args.get("id")))
            if bulk is not None and bulk.status in ("CREATED", "RUNNING"):
                bulk.status = "CANCELED"
            return {"bulkOperation": self._bulk_fields(bulk) if bulk else None, "userErrors": []}
        return None

    def _data(
        self, operation: OperationDefinitionNode, variables: dict[str, Any], version: str
    ) -> Any:
        graph = {
            f.name.value: self._root(f.name.value, _args(f, variables), version)
            for f in _fields(operation.selection_set)
        }
        data = execute(operation.selection_set, graph, variables, self.cursor_generation)
        return data

    def _own_contracts(self) -> list[dict[str, Any]]:
        """The contracts this app created: the only ones `read_own_subscription_contracts`
        shows."""
        return [c for c in self.contracts if (c.get("app") or {}).get("id") == THIS_APP]

    def _matching(
        self, search: str | None, items: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        out = self.orders if items is None else items
        # `status:` filters contracts by their status (orders' `status:any` is not modelled).
        for status in re.findall(r"\bstatus:'?([A-Za-z_]+)'?", search or "") if items else ():
            out = [o for o in out if str(o.get("status", "")).upper() == status.upper()]
        for name, cmp, value in re.findall(
            r"(updated_at|created_at):(>=|<=|>|<)'([^']+)'", search or ""
        ):
            bound = _when(value)
            key = "updatedAt" if name == "updated_at" else "createdAt"
            ops = {
                ">=": lambda a, b: a >= b,
                "<=": lambda a, b: a <= b,
                ">": lambda a, b: a > b,
                "<": lambda a, b: a < b,
            }
            out = [o for o in out if ops[cmp](_when(o[key]), bound)]
        return out

    # --- bulk --------------------------------------------------------------------------------
    def _bulk_fields(self, op: BulkOp) -> dict[str, Any]:
        done = op.status == "COMPLETED"
        return {
            "id": op.gid,
            "status": op.status,
            "errorCode": op.error_code,
            "createdAt": op.created_at,
            "completedAt": op.created_at if done else None,
            "objectCount": str(op.object_count),
            "rootObjectCount": str(op.root_count),
            "fileSize": str(len(op.jsonl)) if done else None,
            "url": f"{self.base}/bulk/{op.gid.rsplit('/', 1)[-1]}.jsonl" if done else None,
            "partialDataUrl": None,
            "query": op.query,
            "type": "QUERY",
        }

    def _run_bulk(self, text: str, version: str) -> dict[str, Any]:
        problem = check_bulk_query(text)
        if problem:
            return {
                "bulkOperation": None,
                "userErrors": [{"field": ["query"], "message": problem, "code": "INVALID"}],
            }
        limit = 5 if version >= "2026-01" else 1
        running = [b for b in self.bulk.values() if b.status in ("CREATED", "RUNNING")]
        if len(running) >= limit:
            message = (
                f"A bulk query operation for this app and shop is already in progress "
                f"({len(running)} running, limit {limit})."
            )
            # The code's name is not in the docs; the message is what a human reads.
            return {
                "bulkOperation": None,
                "userErrors": [
                    {"field": None, "message": message, "code": "OPERATION_IN_PROGRESS"}
                ],
            }
        gid = f"gid://shopify/BulkOperation/{100 + len(self.bulk)}"
        op = BulkOp(gid=gid, query=text)
        if self.bulk_outcomes:
            op.outcome = self.bulk_outcomes.pop(0)
        self.bulk[gid] = op
        return {"bulkOperation": {"id": gid, "status": op.status}, "userErrors": []}

    def _poll(self, op: BulkOp) -> dict[str, Any]:
        if op.status in ("CREATED", "RUNNING"):
            op.polls += 1
            if op.polls >= self.bulk_polls:
                status, code = op.outcome
                op.status, op.error_code = status, code
                if status == "COMPLETED":
                    self._write_jsonl(op)
            else:
                op.status = "RUNNING"
        return self._bulk_fields(op)

    def _write_jsonl(self, op: BulkOp) -> None:
        doc = parse(op.query)
        (operation,) = [d for d in doc.definitions if isinstance(d, OperationDefinitionNode)]
        (top,) = list(_fields(operation.selection_set))
        args = _args(top, {})
        roots = self._root(top.name.value, args, API_VERSION) or []
        node_sel = next(
            (
                n.selection_set
                for e in _fields(top.selection_set)
                if e.name.value == "edges"
                for n in _fields(e.selection_set)
                if n.name.value == "node"
            ),
            None,
        ) or next(
            (n.selection_set for n in _fields(top.selection_set) if n.name.value == "nodes"), None
        )
        lines: list[dict[str, Any]] = []
        for root in roots:
            lines.append(_strip_connections(node_sel, root, None))
            lines.extend(_child_lines(node_sel, root))
        op.root_count = len(roots)
        op.object_count = len(lines)
        random.Random(self.seed).shuffle(lines)
        op.jsonl = b"".join(json.dumps(line).encode() + b"\n" for line in lines)

    def download(self, path: str) -> tuple[int, bytes]:
        m = re.match(r"/bulk/(\d+)\.jsonl", path)
        op = self.bulk.get(f"gid://shopify/BulkOperation/{m.group(1)}") if m else None
        with self._lock:
            self.downloads.append(path)
        if op is None or op.expired or op.status != "COMPLETED":
            # A signed storage URL past its expiry answers 403.
            return (
                403,
                b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
            )
        return 200, op.jsonl
