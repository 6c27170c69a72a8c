"""Admin API GraphQL orders and subscription contracts -> the webhook shape the Shopify mapping
reads. Pure.

The backfill and reconciliation read orders from the Admin GraphQL API (backfill/admin.py) or a
bulk export, and queue them as webhook-shaped bodies, so one mapping (mapping.py, orders.py)
serves live and historic orders alike. Ids become numbers as webhooks carry them, money the
shop-currency amounts, connections plain lists.
"""

from __future__ import annotations

from typing import Any

from bridge.ids import gid_to_id


def connection_nodes(value: Any) -> list[dict[str, Any]]:
    """Nodes of a connection in any shape: `{nodes}`, `{edges: [{node}]}` or a plain list."""
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    if isinstance(value, dict):
        if isinstance(value.get("nodes"), list):
            return [v for v in value["nodes"] if isinstance(v, dict)]
        if isinstance(value.get("edges"), list):
            return [e["node"] for e in value["edges"] if isinstance(e, dict) and e.get("node")]
    return []


def _money(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    return {"amount": value.get("amount"), "currency_code": value.get("currencyCode")}


def _money_set(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    return {
        "shop_money": _money(value.get("shopMoney")),
        "presentment_money": _money(value.get("presentmentMoney")),
    }


def _shop_amount(value: Any) -> Any:
    return ((value or {}).get("shopMoney") or {}).get("amount")


def _address(value: Any) -> dict[str, Any] | None:
    return {"country_code": value.get("countryCodeV2")} if isinstance(value, dict) else None


def _consent(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict) or not value.get("marketingState"):
        return None
    return {"state": str(value["marketingState"]).lower()}


def rest_customer(c: Any) -> dict[str, Any] | None:
    """A GraphQL Customer as the REST customer object the mapping reads."""
    if not isinstance(c, dict):
        return None
    email = c.get("email") or (c.get("defaultEmailAddress") or {}).get("emailAddress")
    phone = c.get("phone") or (c.get("defaultPhoneNumber") or {}).get("phoneNumber")
    return {
        "id": gid_to_id(c.get("id")),
        "email": email,
        "phone": phone,
        "first_name": c.get("firstName"),
        "last_name": c.get("lastName"),
        "state": str(c["state"]).lower() if c.get("state") else None,
        "tags": c.get("tags"),
        "created_at": c.get("createdAt"),
        "updated_at": c.get("updatedAt"),
        "email_marketing_consent": _consent(c.get("emailMarketingConsent")),
        "sms_marketing_consent": _consent(c.get("smsMarketingConsent")),
        "default_address": _address(c.get("defaultAddress")),
    }


def rest_line_item(li: dict[str, Any]) -> dict[str, Any]:
    product = li.get("product") or {}
    return {
        "id": gid_to_id(li.get("id")),
        "product_id": gid_to_id(product.get("id")),
        "variant_id": gid_to_id((li.get("variant") or {}).get("id")),
        "sku": li.get("sku"),
        "title": li.get("title"),
        "name": li.get("name"),
        "vendor": li.get("vendor"),
        "product_type": product.get("productType") or li.get("productType"),
        "quantity": li.get("quantity"),
        "price": _shop_amount(li.get("originalUnitPriceSet")),
        "price_set": _money_set(li.get("originalUnitPriceSet")),
        "line_price_set": _money_set(li.get("originalTotalSet")),
    }


def rest_refund(r: dict[str, Any], order_id: str) -> dict[str, Any]:
    """A GraphQL Refund as a REST refund: its transactions and its refunded line items.

    Money is taken in the shop currency, which is what lifetime value sums. A refund read
    without its transactions stands for one successful refund of `totalRefundedSet`.
    """
    transactions = [
        {
            "kind": str(t.get("kind") or "").lower(),
            "status": str(t.get("status") or "").lower(),
            "amount": _shop_amount(t.get("amountSet")),
            "currency": ((t.get("amountSet") or {}).get("shopMoney") or {}).get("currencyCode"),
        }
        for t in connection_nodes(r.get("transactions"))
    ]
    shop = (r.get("totalRefundedSet") or {}).get("shopMoney") or {}
    if not transactions and shop.get("amount") is not None:
        transactions.append(
            {
                "kind": "refund",
                "status": "success",
                "amount": shop.get("amount"),
                "currency": shop.get("currencyCode"),
            }
        )
    lines = []
    for rli in connection_nodes(r.get("refundLineItems")):
        line = rli.get("lineItem")
        lines.append(
            {
                "id": gid_to_id(rli.get("id")),
                "quantity": rli.get("quantity"),
                "line_item_id": gid_to_id((line or {}).get("id")),
                "line_item": rest_line_item(line) if isinstance(line, dict) else None,
                "subtotal_set": _money_set(rli.get("subtotalSet")),
            }
        )
    return {
        "id": gid_to_id(r.get("id")),
        "order_id": order_id,
        "created_at": r.get("createdAt"),
        "processed_at": r.get("processedAt") or r.get("createdAt"),
        "transactions": transactions,
        "refund_line_items": lines,
    }


def is_graphql_order(obj: dict[str, Any]) -> bool:
    return str(obj.get("id") or "").startswith("gid://shopify/Order/")


def rest_order(o: dict[str, Any]) -> dict[str, Any]:
    """A GraphQL Order (API page node or assembled bulk line) as the REST order JSON. Pure.

    Keeps what `ShopifySource` reads: ids as strings, money sets in shop and presentment
    currency, the customer, line items with their product type, and `refunds` in REST shape.
    """
    order_id = str(o.get("legacyResourceId") or gid_to_id(o.get("id")) or "")
    return {
        "id": order_id,
        "admin_graphql_api_id": o.get("id"),
        "name": o.get("name"),
        "order_number": (str(o["name"]).lstrip("#") or None) if o.get("name") else None,
        "email": o.get("email"),
        "phone": o.get("phone"),
        "test": o.get("test"),
        "created_at": o.get("createdAt"),
        "processed_at": o.get("processedAt"),
        "updated_at": o.get("updatedAt"),
        "cancelled_at": o.get("cancelledAt"),
        "closed_at": o.get("closedAt"),
        "cancel_reason": str(o["cancelReason"]).lower() if o.get("cancelReason") else None,
        "financial_status": (
            str(o["displayFinancialStatus"]).lower() if o.get("displayFinancialStatus") else None
        ),
        "currency": o.get("currencyCode"),
        "presentment_currency": o.get("presentmentCurrencyCode"),
        "total_price": _shop_amount(o.get("totalPriceSet")),
        "total_price_set": _money_set(o.get("totalPriceSet")),
        "subtotal_price_set": _money_set(o.get("subtotalPriceSet")),
        "total_tax_set": _money_set(o.get("totalTaxSet")),
        "total_discounts_set": _money_set(o.get("totalDiscountsSet")),
        "total_shipping_price_set": _money_set(o.get("totalShippingPriceSet")),
        "discount_codes": [{"code": c} for c in o.get("discountCodes") or [] if c],
        "note_attributes": [
            {"name": a.get("key"), "value": a.get("value")}
            for a in o.get("customAttributes") or []
            if isinstance(a, dict)
        ],
        "shipping_address": _address(o.get("shippingAddress")),
        "billing_address": _address(o.get("billingAddress")),
        "customer": rest_customer(o.get("customer")),
        "line_items": [rest_line_item(li) for li in connection_nodes(o.get("lineItems"))],
        "refunds": [rest_refund(r, order_id) for r in connection_nodes(o.get("refunds"))],
    }


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _lower(value: Any) -> str | None:
    return str(value).lower() if isinstance(value, str) and value else None


def webhook_contract(c: dict[str, Any]) -> dict[str, Any]:
    """A GraphQL SubscriptionContract as the `subscription_contracts/*` webhook body, plus what
    only the Admin API has: `created_at`, `updated_at`, `next_billing_date`, `customer_email`,
    `last_payment_status` and `lines` (`product_id variant_id sku title quantity price`, the
    unit price in the contract's currency). Enums become the webhook's lower case; GIDs keep
    their `admin_graphql_api_*` field next to the number. Pure."""
    customer = _object(c.get("customer"))
    policy = _object(c.get("billingPolicy"))
    origin = _object(c.get("originOrder"))
    lines = []
    for line in connection_nodes(c.get("lines")):
        price = _object(line.get("currentPrice"))
        lines.append(
            {
                "product_id": gid_to_id(line.get("productId")),
                "variant_id": gid_to_id(line.get("variantId")),
                "sku": line.get("sku"),
                "title": line.get("title"),
                "quantity": line.get("quantity"),
                "price": price.get("amount"),
            }
        )
    return {
        "admin_graphql_api_id": c.get("id"),
        "id": gid_to_id(c.get("id")),
        "status": _lower(c.get("status")),
        "revision_id": c.get("revisionId"),
        "created_at": c.get("createdAt"),
        "updated_at": c.get("updatedAt"),
        "next_billing_date": c.get("nextBillingDate"),
        "currency_code": c.get("currencyCode"),
        "customer_id": gid_to_id(customer.get("id")),
        "admin_graphql_api_customer_id": customer.get("id"),
        "customer_email": customer.get("email"),
        "billing_policy": {
            "interval": _lower(policy.get("interval")),
            "interval_count": policy.get("intervalCount"),
        },
        "origin_order_id": gid_to_id(origin.get("id")),
        "admin_graphql_api_origin_order_id": origin.get("id"),
        "last_payment_status": _lower(c.get("lastPaymentStatus")),
        "lines": lines,
    }
