"""Delivery: the outbox, rendering, the Pipelines client and its `classify`, sinks, dead letters."""
