"""cartbridge: Shopify webhooks -> Customer.io Pipelines calls.

Data path: web/ (verify, queue) -> store/ (Redis: the inbound queue) -> worker/ (drain a shop's
batch: sources/ map it, identity/ decides, delivery/render.py makes the calls, one commit) ->
the outbox -> worker/background.py and delivery/ (Pipelines /v1/batch). services.py connects
the parts once per process. ARCHITECTURE.md has the whole map.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("cartbridge")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
