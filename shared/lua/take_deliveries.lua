-- Take due webhook deliveries, at most `capacity[sink]` per sink, each under a lease: its due time is
-- pushed past the lease, so a delivery whose worker died is taken again when the lease ends.
-- A sink that is down (delivery_failed.lua) gets no deliveries but one probe every CFG_SINK_PROBE_MS,
-- taken from the deliveries parked on it; a disabled sink (410 Gone) gets nothing.
local now, lease = now_ms, lease_ms
for i = REST, #ARGV do
  if not int(ARGV[i]) then return bad_args('take_deliveries') end
end
local capacity, sinks, room = {}, {}, 0
for i = REST, #ARGV do
  local sink = i - REST
  capacity[sink] = int(ARGV[i])
  sinks[sink] = redis.call('HMGET', keys.sink(sink), 'down', 'probe_at', 'disabled')
  room = room + capacity[sink]
end
local taken = {}
if room == 0 then return taken end

local function take(id, d)
  redis.call('ZADD', DELIVERIES, now + lease, id)
  redis.call('HSET', keys.delivery(id), 'token', token)
  table.insert(taken, {id, d[1], d[2], d[3], d[4]})
end

local due = redis.call('ZRANGEBYSCORE', DELIVERIES, '-inf', now, 'LIMIT', 0, room + 64)
for _, id in ipairs(due) do
  local d = redis.call('HMGET', keys.delivery(id), 'sink', 'sid', 'body', 'attempts')
  if not d[1] then
    redis.call('ZREM', DELIVERIES, id)  -- expired or finished elsewhere
  else
    local sink = tonumber(d[1])
    local state = sinks[sink]
    if state and (state[1] or state[3]) then
      redis.call('ZADD', DELIVERIES, SINK_PARKED + sink, id)  -- wait for the probe (or an operator)
    elseif (capacity[sink] or 0) > 0 then
      capacity[sink] = capacity[sink] - 1
      take(id, d)
    end
  end
end
for sink, state in pairs(sinks) do
  if state[1] and not state[3] and capacity[sink] > 0 and now >= (tonumber(state[2]) or 0) then
    local probe = redis.call('ZRANGEBYSCORE', DELIVERIES, SINK_PARKED + sink, SINK_PARKED + sink, 'LIMIT', 0, 1)
    if probe[1] then
      redis.call('HSET', keys.sink(sink), 'probe_at', now + CFG_SINK_PROBE_MS)
      take(probe[1], redis.call('HMGET', keys.delivery(probe[1]), 'sink', 'sid', 'body', 'attempts'))
    end
  end
end
return taken
