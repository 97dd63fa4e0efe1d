-- A webhook delivery succeeded (or an operator skipped it): drop it and start the chat's next one.
local dkey = keys.delivery(id)
local d = redis.call('HMGET', dkey, 'sink', 'sid')
redis.call('ZREM', DELIVERIES, id)
redis.call('DEL', dkey)
if not d[1] then return 0 end
local skey = keys.sink(d[1])
local sink = redis.call('HMGET', skey, 'fails', 'down', 'disabled')
if sink[2] or sink[3] then
  -- The sink is back (its probe, or an operator's requeue after a 410): every delivery parked on it
  -- is due now, so the delay after an outage is about the outage.
  local now, parked = now_ms, SINK_PARKED + tonumber(d[1])
  for _, waiting in ipairs(redis.call('ZRANGEBYSCORE', DELIVERIES, parked, parked)) do
    redis.call('ZADD', DELIVERIES, now, waiting)
  end
  -- ... and so is every retry of this sink scheduled for later (not the ones in flight: leased).
  for _, waiting in ipairs(redis.call('ZRANGEBYSCORE', DELIVERIES, '(' .. now, '(' .. SINK_PARKED)) do
    local w = redis.call('HMGET', keys.delivery(waiting), 'sink', 'token')
    if w[1] == d[1] and not w[2] then redis.call('ZADD', DELIVERIES, now, waiting) end
  end
  redis.call('DEL', skey)
  count('webhook_sink_up')
elseif sink[1] then
  redis.call('DEL', skey)  -- the failures in a row are over
end
local inflight = keys.inflight(d[1], d[2])
if redis.call('GET', inflight) ~= id then return 0 end
redis.call('DEL', inflight)
count_sink('delivered', d[1])
return start_delivery(d[1], d[2], next_id, now_ms)
