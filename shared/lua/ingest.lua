-- Store one classified push in a single round trip. This runs for every push GMS sends, with GMS
-- waiting for our reply: keep it to the commands that make the push durable.
-- (Pushes are counted by outcome in the ingress process, not here.)
-- ARGV: kind ('t' trigger, 'p' payload, 'w' wake-up), device, session ('' unknown), now_ms, job_id,
--       then per kind:
--   t: position, attempt, user_id, secure_key, app_dbid
--   p: chat_ended ('1' or ''), alias, then index/event-json pairs
--   w: wake-up JSON {"deviceId","text"}
-- Returns the outcome: queued | duplicate | covered | ended | wakeup.
--
-- A trigger is never dropped as a repeat: Chat Server sends one per new event, and while no Refresh
-- was processed they all carry the same (notify-position, notify-attempt 0). Every trigger whose
-- position is not below our cursor marks the chat dirty and bumps `gen`: if a Refresh has not started
-- yet, this one is coalesced with it; if one is in flight, its commit sees `gen` moved and runs again.
local kind, device, sid = ARGV[1], ARGV[2], ARGV[3]
local now, job_id = int(ARGV[4]), ARGV[5]
if not now or device == '' or job_id == '' then return bad_args('ingest') end
local position
if kind == 't' then
  position = int(ARGV[6])
  if #ARGV ~= 10 or not position or not int(ARGV[7]) then return bad_args('ingest') end
elseif kind == 'p' then
  if #ARGV < 7 or (#ARGV - 7) % 2 ~= 0 then return bad_args('ingest') end
  for i = 8, #ARGV, 2 do
    if not int(ARGV[i]) then return bad_args('ingest') end
  end
elseif kind ~= 'w' or #ARGV ~= 6 then
  return bad_args('ingest')
end
local device_key = P .. 'device:' .. device

if sid == '' then
  sid = redis.call('GET', device_key) or (kind == 'p' and device or '')  -- a payload needs a key
end

if sid == '' or (kind == 'w' and redis.call('EXISTS', P .. 'ended:' .. sid) == 1) then
  -- No chat to refresh: surface the push as device.wakeup.
  local text = kind == 'w' and ARGV[6] or cjson.encode({deviceId = device, text = 'PUSH-NOTIFICATION'})
  redis.call('RPUSH', WAKEUPS, text)
  redis.call('PEXPIRE', WAKEUPS, CFG_STATE_TTL_MS)
  ensure_drain(job_id, now)
  return 'wakeup'
end

if kind ~= 'w' and redis.call('EXISTS', P .. 'ended:' .. sid) == 1 then return 'ended' end

local skey = P .. 'session:' .. sid
local fields = {'deviceId', device}

if kind == 't' then
  local user_id, secure_key, app_dbid = ARGV[8], ARGV[9], ARGV[10]
  if user_id ~= '' or secure_key ~= '' then
    local ckey, creds = P .. 'creds:' .. sid, {}
    if user_id ~= '' then creds[#creds + 1] = 'userId'; creds[#creds + 1] = user_id end
    if secure_key ~= '' then creds[#creds + 1] = 'secureKey'; creds[#creds + 1] = secure_key end
    redis.call('HSET', ckey, unpack(creds))
    redis.call('PEXPIRE', ckey, CFG_CREDS_TTL_MS)
  end
  local state = redis.call('HMGET', skey, 'cursor', 'alias_key', 'refused', 'aliases')
  if position ~= -1 and position < tonumber(state[1] or '0') then
    -- Announces events that a refresh, started after this trigger was computed, already fetched (and
    -- its app-dbid is older than that refresh's alias).
    redis.call('PEXPIRE', skey, CFG_STATE_TTL_MS)
    return 'covered'
  end
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
  if state[3] and redis.call('EXISTS', P .. 'lease:' .. sid) == 0 then
    redis.call('ZADD', DIRTY, 'LT', now, sid)
  end
elseif kind == 'p' then
  if ARGV[6] == '1' then fields[#fields + 1] = 'end'; fields[#fields + 1] = 'chatEnded' end
  if ARGV[7] ~= '' then fields[#fields + 1] = 'alias'; fields[#fields + 1] = ARGV[7] end
  fields[#fields + 1] = 'mode'; fields[#fields + 1] = 'payload'
  local cursor = tonumber(redis.call('HGET', skey, 'cursor') or '0')
  local staged_key = P .. 'staged:' .. sid
  local fresh = 0
  for i = 8, #ARGV, 2 do
    if int(ARGV[i]) >= cursor then
      fresh = fresh + redis.call('HSETNX', staged_key, ARGV[i], ARGV[i + 1])
    end
  end
  if fresh == 0 and ARGV[6] ~= '1' then return 'duplicate' end
  redis.call('PEXPIRE', staged_key, CFG_STATE_TTL_MS)
end

-- `gen` lets a worker's commit see pushes that arrived while it was refreshing.
redis.call('HSET', skey, unpack(fields))
redis.call('HINCRBY', skey, 'gen', 1)
redis.call('PEXPIRE', skey, CFG_STATE_TTL_MS)
redis.call('SET', device_key, sid, 'PX', CFG_STATE_TTL_MS)
mark_dirty(sid, now)
ensure_drain(job_id, now)
return 'queued'
