-- Take up to `max` chats that are due, each under a single-flight lease.
-- A claimed chat stays in the dirty set with its score pushed past the lease: if the worker dies, the
-- chat becomes due again when the lease expires, without waiting for a Chat Server resend.
-- Waiting wake-ups are emitted to the sinks here, in the same transaction that takes them.
-- ARGV: now_ms, token, max, job_base
-- Returns the claims, each {sid, due_ms, state fields, credential fields, staged fields}.
local now, token, max, job_base = int(ARGV[1]), ARGV[2], int(ARGV[3]), ARGV[4]
if #ARGV ~= 4 or not now or not max or token == '' or job_base == '' then return bad_args('claim') end
local claims = {}
local ready = redis.call('ZRANGEBYSCORE', DIRTY, '-inf', now, 'WITHSCORES', 'LIMIT', 0, max + 64)
for i = 1, #ready, 2 do
  if #claims >= max then break end
  local sid = ready[i]
  if redis.call('SET', P .. 'lease:' .. sid, token, 'NX', 'PX', CFG_LEASE_TTL_MS) then
    redis.call('ZADD', DIRTY, 'XX', now + CFG_LEASE_TTL_MS, sid)
    table.insert(claims, {sid, ready[i + 1], redis.call('HGETALL', P .. 'session:' .. sid),
      redis.call('HGETALL', P .. 'creds:' .. sid), redis.call('HGETALL', P .. 'staged:' .. sid)})
  end
end
local wakeups = redis.call('LPOP', WAKEUPS, max) or {}
for i, wakeup in ipairs(wakeups) do
  local ok, decoded = pcall(cjson.decode, wakeup)
  local device = ok and type(decoded) == 'table' and decoded.deviceId
  if type(device) == 'string' and device ~= '' then  -- the ingress wrote it; anything else is dropped
    fan_out('~' .. device, {notice(device, nil, 'device.wakeup', wakeup, now)}, job_base .. '-w' .. i, now)
    count('wakeups_delivered')
  end
end
return claims
