"""The Redis boundary: key names, wire framings and Lua, the pipelined RESP client, the facade.

Only this package (and the composition root, bridge/services.py) imports redis.
"""

from bridge.store.facade import Store, StoreError, connect

__all__ = ["Store", "StoreError", "connect"]
