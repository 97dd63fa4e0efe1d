-- Store one classified push in a single round trip. This runs for every push GMS sends, with GMS
-- waiting for our reply: keep it to the commands that make the push durable.
-- (Pushes are counted by outcome in the ingress process; here only payload events that came late.)
-- ARGV: kind ('t' trigger, 'p' payload, 'w' wake-up), device, session ('' unknown), now_ms, job_id,
--       then per kind:
--   t: position, attempt, user_id, secure_key, app_dbid
--   p: chat_ended ('1' or ''), alias, then index/event-json pairs (session '': the device's chat)
--   w: wake-up JSON {"deviceId","text"}
-- Returns the outcome: queued | duplicate | covered | ended | wakeup | late.
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

-- Payload pushes without chatId belong to the device's chat: the device mapping, else the device id
-- itself. A new transcript starts the device's next chat: its index 1 when that chat is past index 1
-- or has ended, or a ParticipantJoined once that chat has ended. The next chat's session id is one
-- never used before: `<device>~<now_ms>` (a counter would start over once its key expired, and repeat
-- (sessionId, index) pairs). The first chat keeps the device id, which stays taken (its ended marker
-- is renewed here) while the device has recent chats, so late pushes of an ended chat answer `ended`.
local function device_chat(now)
  local current = redis.call('GET', device_key) or device
  local ended = redis.call('EXISTS', P .. 'ended:' .. current) == 1
  local cursor = tonumber(redis.call('HGET', P .. 'session:' .. current, 'cursor') or '0')
  local starts = false
  for i = 8, #ARGV, 2 do
    if int(ARGV[i]) == 1 and (ended or cursor > 1) then starts = true; break end
    if ended then
      local ok, event = pcall(cjson.decode, ARGV[i + 1])
      if ok and type(event) == 'table' and event.type == 'ParticipantJoined' then starts = true; break end
    end
  end
  if not starts then return current end
  if redis.call('EXISTS', P .. 'session:' .. device, P .. 'ended:' .. device) == 0 then return device end
  redis.call('PEXPIRE', P .. 'ended:' .. device, CFG_STATE_TTL_MS)
  local sid = device .. '~' .. now
  while redis.call('EXISTS', P .. 'session:' .. sid, P .. 'ended:' .. sid) > 0 do
    now = now + 1
    sid = device .. '~' .. now
  end
  return sid
end

-- Below a payload chat's cursor an event was delivered, unless it is in `skipped` (index ranges the
-- cursor passed without them, "lo-hi,lo-hi": commit.lua) or below 1 (indexes start at 1): then it
-- arrives late, after the relay stopped waiting for it.
local function late(skipped, index)
  if index < 1 then return true end
  for lo, hi in string.gmatch(skipped or '', '(%d+)-(%d+)') do
    if index >= tonumber(lo) and index <= tonumber(hi) then return true end
  end
  return false
end

if sid == '' then
  if kind == 'p' then sid = device_chat(now) else sid = redis.call('GET', device_key) or '' end
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
local outcome = nil

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
  local state = redis.call('HMGET', skey, 'cursor', 'skipped')
  local cursor = tonumber(state[1] or '0')
  local staged_key = P .. 'staged:' .. sid
  local fresh, missed = 0, 0
  for i = 8, #ARGV, 2 do
    local index = int(ARGV[i])
    if index >= cursor then
      fresh = fresh + redis.call('HSETNX', staged_key, ARGV[i], ARGV[i + 1])
    elseif late(state[2], index) then
      missed = missed + 1
    end
  end
  -- A late event is acknowledged (GMS never resends a payload push) but not delivered: delivering it
  -- now would break index order. The push is answered `late` and the event counted, never `duplicate`.
  if missed > 0 then
    count('payload_late', missed)
    outcome = 'late'
  end
  if fresh == 0 and ARGV[6] ~= '1' then return outcome or 'duplicate' end
  redis.call('PEXPIRE', staged_key, CFG_STATE_TTL_MS)
  -- The push may fill a gap: due now, not when the gap's wait ends (a worker holding the chat sees
  -- the push through `gen` when it commits).
  if redis.call('EXISTS', P .. 'lease:' .. sid) == 0 then redis.call('ZADD', DIRTY, 'LT', now, sid) end
end

-- `gen` lets a worker's commit see pushes that arrived while it was refreshing.
redis.call('HSET', skey, unpack(fields))
redis.call('HINCRBY', skey, 'gen', 1)
redis.call('PEXPIRE', skey, CFG_STATE_TTL_MS)
redis.call('SET', device_key, sid, 'PX', CFG_STATE_TTL_MS)
mark_dirty(sid, now)
ensure_drain(job_id, now)
return outcome or 'queued'
