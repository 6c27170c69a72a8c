"""cartbridge: Shopify webhooks -> Customer.io Pipelines calls.

Data path: web (verify, enqueue) -> Redis inbound queue -> drain job (map: pure; identity and
cart state: Redis) -> outbox -> deliver job (Pipelines /v1/batch).
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("cartbridge")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
