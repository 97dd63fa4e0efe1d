-- DELETE /sessions/{sid}: forget a chat's credentials and pending work (no chat.ended is emitted).
-- ARGV: sid
local sid = ARGV[1]
local skey = P .. 'session:' .. sid
local device = redis.call('HGET', skey, 'deviceId')
if device and redis.call('GET', P .. 'device:' .. device) == sid then
  redis.call('DEL', P .. 'device:' .. device)
end
redis.call('ZREM', DIRTY, sid)
return redis.call('DEL', skey, P .. 'staged:' .. sid)
