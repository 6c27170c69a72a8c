"""Shopify: webhook payload models and their mapping to canonical events (pure, no I/O)."""

from bridge.sources.shopify.mapping import ShopifySource

__all__ = ["ShopifySource"]
