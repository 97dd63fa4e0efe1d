-- Take up to `max` chats that are due, each under a single-flight lease.
-- A claimed chat stays in the dirty set with its score pushed past the lease: if the worker dies, the
-- chat becomes due again when the lease expires, without waiting for a Chat Server resend.
-- Waiting wake-ups are emitted to the sinks here, in the same transaction that takes them.
local now = now_ms
local claims = {}
local ready = redis.call('ZRANGEBYSCORE', DIRTY, '-inf', now, 'WITHSCORES', 'LIMIT', 0, max + 64)
for i = 1, #ready, 2 do
  if #claims >= max then break end
  local sid = ready[i]
  if redis.call('SET', keys.lease(sid), token, 'NX', 'PX', CFG_LEASE_TTL_MS) then
    redis.call('ZADD', DIRTY, 'XX', now + CFG_LEASE_TTL_MS, sid)
    local skey, ckey = keys.session(sid), keys.credentials(sid)
    local state, creds = redis.call('HGETALL', skey), redis.call('HGETALL', ckey)
    for f = 1, #state, 2 do
      if state[f] == 'secureKey' then
        -- Credentials stored by a version before the two lifetimes: move them to their own key.
        local old = redis.call('HMGET', skey, 'userId', 'secureKey')
        if #creds == 0 then
          redis.call('HSET', ckey, 'userId', old[1] or '', 'secureKey', old[2])
          redis.call('PEXPIRE', ckey, CFG_CREDS_TTL_MS)
          creds = redis.call('HGETALL', ckey)
        end
        redis.call('HDEL', skey, 'userId', 'secureKey')
        state = redis.call('HGETALL', skey)
        break
      end
    end
    table.insert(claims, {sid, ready[i + 1], state, creds, redis.call('HGETALL', keys.staged(sid))})
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
