"""Bodies for the product tests (issue 17): orders, refunds and products as Shopify sends them."""

from __future__ import annotations

from typing import Any


def order_body(
    order_id: int,
    *,
    customer_id: int | None = 5001,
    created: str = "2026-03-01T10:00:00Z",
    lines: list[tuple[int, str, int]] | None = None,
    cancelled: str | None = None,
) -> dict[str, Any]:
    """An `orders/*` body; `lines` are (product id, sku, quantity)."""
    line_items = [
        {
            "id": order_id * 100 + i,
            "product_id": pid,
            "variant_id": pid * 10,
            "sku": sku,
            "title": f"Product {pid}",
            "quantity": qty,
            "price": "10.00",
            "vendor": "Payload Vendor",
            "product_type": "Payload Type",
        }
        for i, (pid, sku, qty) in enumerate(lines or [])
    ]
    return {
        "id": order_id,
        "email": f"buyer{customer_id or 'guest'}@example.com",
        "created_at": created,
        "processed_at": created,
        "updated_at": created,
        "cancelled_at": cancelled,
        "total_price": f"{10 * sum(q for _, _, q in lines or []):.2f}",
        "currency": "USD",
        "financial_status": "paid",
        "test": False,
        "customer": (
            {"id": customer_id, "email": f"buyer{customer_id}@example.com"}
            if customer_id is not None
            else None
        ),
        "line_items": line_items,
    }


def refund_body(
    refund_id: int,
    order: dict[str, Any],
    lines: list[tuple[int, int]],
    *,
    created: str = "2026-03-05T10:00:00Z",
) -> dict[str, Any]:
    """A `refunds/create` body refunding (line index, quantity) pairs of `order`."""
    rlis = [
        {
            "id": refund_id * 100 + index,
            "line_item_id": order["line_items"][index]["id"],
            "quantity": qty,
            "subtotal": 10.0 * qty,
            "line_item": order["line_items"][index],
        }
        for index, qty in lines
    ]
    amount = sum(10 * q for _, q in lines)
    return {
        "id": refund_id,
        "order_id": order["id"],
        "created_at": created,
        "refund_line_items": rlis,
        "transactions": [
            {"kind": "refund", "status": "success", "amount": f"{amount:.2f}", "currency": "USD"}
        ],
    }


def product_webhook(
    product_id: int,
    *,
    product_type: str = "Shampoo",
    vendor: str = "Acme",
    updated: str = "2026-02-01T00:00:00Z",
    metafields: dict[str, tuple[Any, str]] | None = None,
    category: str | None = None,
) -> dict[str, Any]:
    """A `products/update` body (REST-shaped); metafields as a subscription naming them sends."""
    body: dict[str, Any] = {
        "id": product_id,
        "admin_graphql_api_id": f"gid://shopify/Product/{product_id}",
        "title": f"Product {product_id}",
        "product_type": product_type,
        "vendor": vendor,
        "updated_at": updated,
        "variants": [{"id": product_id * 10, "sku": f"SKU-{product_id}"}],
    }
    if metafields is not None:
        body["metafields"] = [
            {"namespace": k.partition(".")[0], "key": k.partition(".")[2], "value": v, "type": t}
            for k, (v, t) in metafields.items()
        ]
    if category is not None:
        body["category"] = {"name": category, "full_name": f"Health & Beauty > {category}"}
    return body


def replenishing(days: Any, flag: Any = "true") -> dict[str, tuple[Any, str]]:
    return {
        "custom.replenishable": (flag, "boolean"),
        "custom.days_to_replenish": (days, "number_integer"),
    }
