"""The worker: drains each shop's inbound queue in batches, delivers in the background, sweeps."""
