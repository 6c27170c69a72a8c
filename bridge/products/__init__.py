"""Product metadata on every item: a cache of the shop's products kept in its state records.

- `record.py` (pure): the cached record's format, and the store's metafields read from it
  (`replenishable`, `days_to_replenish`), parsed defensively.
- `enrich.py` (pure): every item of a mapped webhook gets its product's metadata from the
  records the batch loaded with the rest of its state; products not cached are noted as wanted.
- `sync.py` (I/O): the Admin API reads that fill the cache (wanted products, and a periodic
  refresh of recently updated ones), queued through the drain like webhooks.

See docs/products.md.
"""
