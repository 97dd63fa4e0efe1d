-- A webhook attempt failed. Fenced by the lease token: a worker that lost its lease changes nothing.
-- `retry_at_ms` '': that was the last attempt; `gone`: HTTP 410 Gone. Returns what became of it:
--   'fenced' (not ours any more), 'retry' (due again at retry_at_ms), 'parked' (its sink is down: it
--   waits for the sink's probe, using no attempt), 'dead' (dead-lettered: the caller records it in
--   RQ's failed registry), 'gone' (410: dead-lettered and the sink disabled: nothing more is sent).
local now = now_ms
local dkey = keys.delivery(id)
local d = redis.call('HMGET', dkey, 'token', 'sink')
if d[1] ~= token or not d[2] then return 'fenced' end
redis.call('HDEL', dkey, 'token')
local skey = keys.sink(d[2])
if gone then
  redis.call('ZREM', DELIVERIES, id)
  redis.call('HINCRBY', dkey, 'attempts', 1)
  redis.call('HSET', dkey, 'dead', 1)
  redis.call('HSET', skey, 'disabled', now)
  redis.call('PEXPIRE', skey, CFG_OUTBOX_TTL_MS)
  count_sink('dead_lettered', d[2])
  count('webhook_sink_disabled')
  return 'gone'
end
local fails = redis.call('HINCRBY', skey, 'fails', 1)
redis.call('PEXPIRE', skey, CFG_OUTBOX_TTL_MS)
local state = redis.call('HMGET', skey, 'down', 'disabled')
local down = state[1] or state[2]
if not down and fails >= CFG_SINK_DOWN_AFTER then
  -- Several deliveries failed in a row: the sink is down. Its deliveries wait; one probe a second.
  redis.call('HSET', skey, 'down', now, 'probe_at', now + CFG_SINK_PROBE_MS)
  down = now
  count('webhook_sink_down')
end
if down then
  redis.call('ZADD', DELIVERIES, SINK_PARKED + tonumber(d[2]), id)
  return 'parked'
end
redis.call('HINCRBY', dkey, 'attempts', 1)
if not retry_at_ms then
  redis.call('ZREM', DELIVERIES, id)
  redis.call('HSET', dkey, 'dead', 1)
  count_sink('dead_lettered', d[2])
  return 'dead'
end
redis.call('ZADD', DELIVERIES, retry_at_ms, id)
count_sink('retried', d[2])
return 'retry'
