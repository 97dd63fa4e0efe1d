-- Store a trigger (notify-position) push: its credentials, its alias candidate, and the chat marked due.
if sid == '' then sid = redis.call('GET', keys.device(device)) or '' end
if sid == '' then
  return queue_wakeup(cjson.encode({deviceId = device, text = 'PUSH-NOTIFICATION'}), job_id, now_ms)
end
if redis.call('EXISTS', keys.ended(sid)) == 1 then return 'ended' end

local skey = keys.session(sid)
if user_id ~= '' or secure_key ~= '' then
  local ckey, creds = keys.credentials(sid), {}
  if user_id ~= '' then creds[#creds + 1] = 'userId'; creds[#creds + 1] = user_id end
  if secure_key ~= '' then creds[#creds + 1] = 'secureKey'; creds[#creds + 1] = secure_key end
  redis.call('HSET', ckey, unpack(creds))
  redis.call('PEXPIRE', ckey, CFG_CREDS_TTL_MS)
end
local state = redis.call('HMGET', skey, 'cursor', 'alias_key', 'refused', 'aliases', 'gen')
if position ~= -1 and position < tonumber(state[1] or '0') then
  -- Announces events that a refresh, started after this trigger was computed, already fetched (and
  -- its app-dbid is older than that refresh's alias).
  redis.call('PEXPIRE', skey, CFG_STATE_TTL_MS)
  return 'covered'
end
local fields = {'deviceId', device}
if position == -1 then
  fields[#fields + 1] = 'end'; fields[#fields + 1] = 'removed'
  if not state[2] then take_alias(fields, state[2], app_dbid, 0) end
elseif state[3] and app_dbid ~= '' and not has(state[3], app_dbid) then
  -- GMS refused the last Refresh as if the chat had ended, perhaps for a stale alias (release.lua,
  -- 'suspect'): an app-dbid it has not refused is the better guess, whatever its key.
  take_alias(fields, nil, app_dbid, 2 * position)
else
  take_alias(fields, state[2], app_dbid, 2 * position)
end
if app_dbid ~= '' then fields[#fields + 1] = 'aliases'; fields[#fields + 1] = remember(state[4], app_dbid) end
-- After a refusal this trigger may bring the alias to try: go now, not when the wait ends (unless a
-- worker holds the chat: its commit or release sees this push through `gen`).
if state[3] and redis.call('EXISTS', keys.lease(sid)) == 0 then
  redis.call('ZADD', DIRTY, 'LT', now_ms, sid)
end
store_push(sid, device, fields, now_ms, job_id, state[5] or '0')
return 'queued'
