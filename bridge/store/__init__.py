"""The Redis boundary: the only package (with the composition root, bridge/services.py) that
imports redis, and the only place a key name is built.

- keys.py: every key name (per shop and process-wide);
- scripts.py: the Lua, each script naming the record format it reads;
- resp.py: the pipelined RESP client (hiredis on redis-py's connection); cluster.py: its
  counterpart on a Redis Cluster (DATA_REDIS_URL), routing by slot and following redirections;
- facade.py: `Store` (queues, outbox, leases, counters) and the write plans it applies
  (`Commit`, `Settlement`);
- deadletters.py, monitoring.py, shopdata.py, backfill.py: the I/O of dead letters, the volume
  check and /metrics, erasure and export, and the backfill's checkpoint;
- lease.py: a lease kept alive by a thread; server.py: how a private redis-server starts.

Parts outside catch `StoreError`, never a redis-py class. Nothing here imports the parts above
it (delivery, worker, web...): records they own are typed here by what the store needs of them.
"""

from bridge.store.facade import Store, StoreError, connect, open_store

__all__ = ["Store", "StoreError", "connect", "open_store"]
