"""Backfill: historic orders and customers from a file or the Admin API, and reconciliation."""
