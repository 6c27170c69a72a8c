"""Recharge: webhook payload models and their mapping to canonical facts (pure, no I/O)."""

from bridge.sources.recharge.mapping import RechargeSource

__all__ = ["RechargeSource"]
