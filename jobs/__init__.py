"""Thin RQ job functions: JSON-safe arguments in, work done by `bridge`, exceptions raised."""
