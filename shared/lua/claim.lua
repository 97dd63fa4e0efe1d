-- Take up to `max` chats that are due, each under a single-flight lease.
-- A claimed chat stays in the dirty set with its score pushed past the lease: if the worker dies, the
-- chat becomes due again when the lease expires, without waiting for a Chat Server resend.
-- Waiting wake-ups are emitted to the sinks here, in the same transaction that takes them.
-- ARGV: now_ms, lease_ttl_ms, token, max, stream_maxlen, stream_ttl_ms, sinks, job_base, batch_max,
--       webhook_keys_ttl_ms
-- Returns the claims, each {sid, due_ms, session fields, staged fields}.
local now, ttl, token, max = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local claims = {}
local ready = redis.call('ZRANGEBYSCORE', DIRTY, '-inf', now, 'WITHSCORES', 'LIMIT', 0, max + 64)
for i = 1, #ready, 2 do
  if #claims >= max then break end
  local sid = ready[i]
  local lease = P .. 'lease:' .. sid
  if redis.call('SET', lease, token, 'NX', 'PX', ttl) then
    redis.call('ZADD', DIRTY, 'XX', now + ttl, sid)
    table.insert(claims, {sid, ready[i + 1], redis.call('HGETALL', P .. 'session:' .. sid),
      redis.call('HGETALL', P .. 'staged:' .. sid)})
  end
end
local wakeups = redis.call('LPOP', WAKEUPS, max) or {}
for i, wakeup in ipairs(wakeups) do
  local device = cjson.decode(wakeup).deviceId
  local stream = P .. 'events:' .. device
  redis.call('XADD', stream, 'MAXLEN', '~', ARGV[5], '*', 'type', 'device.wakeup', 'data', wakeup)
  redis.call('PEXPIRE', stream, ARGV[6])
  fan_out('~' .. device, {'X{"type":"device.wakeup","timestamp":"' .. iso(now):sub(1, 19) .. 'Z","data":'
    .. wakeup .. '}'}, tonumber(ARGV[7]), ARGV[8] .. '-w' .. i, now, tonumber(ARGV[9]), ARGV[10])
  count('wakeups_delivered')
end
return claims
