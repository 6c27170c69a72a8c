"""Compliance: Shopify's mandatory privacy topics (redact, data request): erasure, export."""
