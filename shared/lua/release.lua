-- Give a claimed chat back without delivering.
--   how = 'retry': a refresh failed; due again at at_ms (the caller's backoff grows with `retries`).
--   how = 'later': waiting for a gap in payload indexes to fill; due again at at_ms.
--   how = 'park': no credentials; emits `chat.credentials_required` once when the chat enters the
--                 parked set. PUT /sessions (or a trigger carrying the secure key) resumes it.
--   how = 'suspect': GMS refused the Refresh as if the chat had ended, perhaps only because `alias` (the
--                 one it used) is stale; it joins `refused`, and the chat is due again at once with an
--                 alias not refused yet, else at at_ms or with the next push. The worker ends the chat
--                 when an alias already refused is refused again.
--   how = 'drop': nothing left to work on (the chat's state was forgotten or expired).
local at, now = at_ms, now_ms
local lease = keys.lease(sid)
if redis.call('GET', lease) ~= token then
  count('commit_fenced')
  return 'fenced'
end
redis.call('DEL', lease)
local skey = keys.session(sid)
local state = redis.call('HMGET', skey, 'gen', 'deviceId', 'alias', 'aliases', 'refused')
local unchanged = (state[1] or '') == gen
if not state[2] then how = 'drop' end  -- never re-create a forgotten chat's hash (it would have no TTL)
if how == 'retry' then
  -- Never dropped: a Refresh that timed out on our side may still have reached GMS and acknowledged
  -- the triggers, so Chat Server's resend cannot be relied on to bring the chat back.
  redis.call('HINCRBY', skey, 'retries', 1)
  redis.call('ZADD', DIRTY, at, sid)
  count('refresh_retried')
  return 'retry'
elseif how == 'later' then
  redis.call('ZADD', DIRTY, at, sid)
  return 'later'
elseif how == 'suspect' then
  -- Try the newest alias GMS has not refused yet: one stored while the Refresh ran, else a candidate
  -- seen since the last successful Refresh; with none, wait for the next push (or at_ms).
  local refused = remember(state[5], alias)
  local pick = nil
  if (state[3] or '') ~= alias and not has(refused, state[3] or '') then
    pick = state[3]
  else
    for _, candidate in ipairs(items(state[4])) do
      if not has(refused, candidate) then pick = candidate; break end
    end
  end
  redis.call('HSET', skey, 'refused', refused)
  if pick then redis.call('HSET', skey, 'alias', pick) end
  redis.call('ZADD', DIRTY, (pick or not unchanged) and now or at, sid)
  return 'suspect'
end
if unchanged then redis.call('ZREM', DIRTY, sid) end
if how == 'drop' then return 'drop' end
if not redis.call('ZSCORE', PARKED, sid) then
  local data = cjson.encode({deviceId = state[2], sessionId = sid})
  fan_out(sid, {notice(state[2], sid, 'chat.credentials_required', data, now)}, id_base, now)
  count('credentials_required')
end
redis.call('ZREMRANGEBYSCORE', PARKED, '-inf', now - CFG_STATE_TTL_MS)  -- chats that expired parked
redis.call('ZADD', PARKED, 'NX', now, sid)
redis.call('PEXPIRE', PARKED, CFG_STATE_TTL_MS)
count('refresh_parked')
return 'park'
