-- Take due webhook deliveries, at most `capacity[sink]` per sink, each under a lease: its due time is
-- pushed past the lease, so a delivery whose worker died is taken again when the lease ends.
-- ARGV: now_ms, lease_ms, token, then one capacity per sink.
-- Returns a list of {id, sink, sid, body, attempts}.
local now, lease, token = int(ARGV[1]), int(ARGV[2]), ARGV[3]
if not now or not lease or token == '' then return bad_args('take_deliveries') end
for i = 4, #ARGV do
  if not int(ARGV[i]) then return bad_args('take_deliveries') end
end
local capacity, room = {}, 0
for i = 4, #ARGV do
  capacity[i - 4] = int(ARGV[i])
  room = room + capacity[i - 4]
end
local taken = {}
if room == 0 then return taken end
local due = redis.call('ZRANGEBYSCORE', DELIVERIES, '-inf', now, 'LIMIT', 0, room + 64)
for _, id in ipairs(due) do
  local dkey = P .. 'delivery:' .. id
  local d = redis.call('HMGET', dkey, 'sink', 'sid', 'body', 'attempts')
  if not d[1] then
    redis.call('ZREM', DELIVERIES, id)  -- expired or finished elsewhere
  else
    local sink = tonumber(d[1])
    if (capacity[sink] or 0) > 0 then
      capacity[sink] = capacity[sink] - 1
      redis.call('ZADD', DELIVERIES, 'XX', now + lease, id)
      redis.call('HSET', dkey, 'token', token)
      table.insert(taken, {id, d[1], d[2], d[3], d[4]})
    end
  end
end
return taken
