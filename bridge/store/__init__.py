"""The Redis boundary: key names, wire framings and Lua, the pipelined RESP client, the facade."""
