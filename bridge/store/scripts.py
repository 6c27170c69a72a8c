"""The Lua scripts the store runs, each with the record format it reads or writes.

A script that reads a record must agree with the Python codec that writes it: each says which.
"""

# For producers that want to know about duplicates up front (backfill, reconcile): skip a
# webhook whose id the drain already processed (its seen-marker, KEYS[1]) or a copy queued by the
# web claimed (KEYS[5], `Store.accept`). This script claims nothing and marks nothing: the drain's
# commit marks what it processed (processor.py), so a refused or lost write marks nothing.
# Record format: ARGV[1] is an encoded `Envelope` (wire.py), queued as it is, never parsed.
# Every key is the shop's (one cluster slot): the caller adds the shop to SHOPS_KEY when this
# returns 2 (woken), before it acknowledges.
INGEST = """
if redis.call('EXISTS', KEYS[1], KEYS[5]) > 0 then
  redis.call('HINCRBY', KEYS[4], ARGV[4] .. ':duplicate', 1)
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[4], ARGV[4] .. ':accepted', 1)
if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return 2
end
return 1
"""

# The delivery window: resume an unfinished one (a crashed deliverer's), else release the people
# whose retry is due (their held calls, in order) and take new entries up to the byte and count
# limits. A new entry of a person who still waits for a retry joins that person's held list, so
# per-person order holds while other people go on. Returns {window, outbox length left}.
# Record format: an outbox entry, a JSON header line (`wire.OutboxHeader`), then the call.
# People are named by the keyed hash in the header's "h" (`wire.hold_name` is the Python side);
# an entry queued before headers carried one gets the unkeyed name it had then: the first 16 hex
# digits of SHA-1 of the header's "p".
TAKE_OUTBOX = """
local w = redis.call('LRANGE', KEYS[2], 0, -1)
if #w > 0 then return {w, redis.call('LLEN', KEYS[1])} end
local maxb, maxn, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local prefix = ARGV[4]
local total, n = 0, 0
local released = {}
-- The window as pushed to KEYS[2] (empty before), returned without reading it back.
local window = {}
local function push(key, items)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', key, unpack(items, i, math.min(i + 999, #items)))
  end
end
for _, h in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)) do
  local items = redis.call('LRANGE', prefix .. h, 0, -1)
  push(KEYS[2], items)
  n = n + #items
  for _, v in ipairs(items) do
    total = total + #v + 1
    window[#window + 1] = v
  end
  redis.call('DEL', prefix .. h)
  redis.call('ZREM', KEYS[3], h)
  released[h] = true
end
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[5]) - 1)
-- Nobody held (the usual case): one ZCARD for the window instead of a ZSCORE per entry.
local anyheld = redis.call('ZCARD', KEYS[3]) > 0
local taken, towork = 0, {}
for i, v in ipairs(items) do
  if n >= maxn or (n > 0 and total + #v + 1 > maxb) then break end
  local nl = string.find(v, string.char(10), 1, true)
  local p, h = '', nil
  if nl then
    local ok, head = pcall(cjson.decode, string.sub(v, 1, nl - 1))
    if ok and type(head) == 'table' then
      if type(head.h) == 'string' and head.h ~= '' then h = head.h end
      if type(head.p) == 'string' then p = head.p end
    end
  end
  h = h or string.sub(redis.sha1hex(p), 1, 16)
  if anyheld and (not released[h]) and redis.call('ZSCORE', KEYS[3], h) then
    redis.call('RPUSH', prefix .. h, v)
  else
    towork[#towork + 1] = v
    window[#window + 1] = v
    n = n + 1
    total = total + #v + 1
  end
  taken = i
end
if taken > 0 then redis.call('LTRIM', KEYS[1], taken, -1) end
push(KEYS[2], towork)
-- What is left: known without LLEN when the scan saw the whole outbox.
local left = #items - taken
if #items >= tonumber(ARGV[5]) then left = redis.call('LLEN', KEYS[1]) end
return {window, left}
"""

# Clear the pending flag only when nothing is left; otherwise the caller re-enqueues itself.
# Pending flags expire (FLAG_STALE_MS): one whose job was lost stops blocking new wake-ups.
# Record format: none (list lengths and a flag holding a time in ms).
FINISH = """
if redis.call('LLEN', KEYS[1]) == 0 and redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[3])
  return 0
end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
return 1
"""

# FINISH, after letting a lease go if it is still the caller's (KEYS[4], token ARGV[3]): a
# delivery's end in one round trip instead of two (the lease is let go first, as before, so a
# delivery FINISH wakes can take it at once).
RELEASE_AND_FINISH = (
    """
if redis.call('GET', KEYS[4]) == ARGV[3] then redis.call('DEL', KEYS[4]) end
"""
    + FINISH
)

# Run a list of commands, atomically, only while a lease key (KEYS[1]) holds the caller's token
# (ARGV[1]); else nothing runs and the reply is nil. ARGV[2] is how many commands follow, each as
# its argument count then its arguments. KEYS[2..] name every key the commands touch: the
# script reads them from ARGV, but a Redis Cluster checks a script's declared keys to route it
# and, while the slot migrates, to hold it back until they are all on one node (TRYAGAIN), so
# nothing is read or written on the wrong side. Each command runs even if one before it failed
# (pcall), as a MULTI's would; the reply lists their replies, errors among them. A delivery
# round's settlement (`Store.settle_outbox`).
IF_HELD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local replies, at = {}, 3
for c = 1, tonumber(ARGV[2]) do
  local n = tonumber(ARGV[at])
  replies[c] = redis.pcall(unpack(ARGV, at + 1, at + n))
  at = at + n + 1
end
return replies
"""

# A drain starts: if the work list holds a batch a drain before it took and did not commit, one
# more try on it is counted (and the size last tried returned); else the count is cleared.
# Record format: the tries hash (`Keys.drain_tries`): fields "n" (tries) and "size" (integers).
BEGIN_DRAIN = """
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
  return {0, 0}
end
local n = redis.call('HINCRBY', KEYS[2], 'n', 1)
redis.call('EXPIRE', KEYS[2], 604800)
return {n, tonumber(redis.call('HGET', KEYS[2], 'size') or '0')}
"""

# Move up to ARGV[1] webhooks from the inbound queue (KEYS[1]) to the end of the work list
# (KEYS[2]) and return them. Plain pipelined LMOVEs asked for a full batch whatever was queued:
# under light traffic a drain sent ~400 LMOVEs that found nothing for each webhook it moved
# (bench/redis_cost.py); an LMOVE each in here still cost a command a webhook, where LRANGE,
# LTRIM and RPUSH cost three a batch. Atomic, so a crash leaves every webhook in exactly one of
# the two lists. Record format: envelopes, moved as they are.
TAKE_INBOUND = """
local moved = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #moved == 0 then return moved end
redis.call('LTRIM', KEYS[1], #moved, -1)
for i = 1, #moved, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(moved, i, math.min(i + 999, #moved)))
end
return moved
"""

# Let a lease go, unless another holder has it now. Record format: a lease holds its token.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Extend a lease still held by its token. Record format: a lease holds its token.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
