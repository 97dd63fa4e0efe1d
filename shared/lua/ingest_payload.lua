-- Store a payload push: its events staged by index, released in index order by a worker.
-- Without chatId (`sid` '') the push belongs to the device's chat.
for i = REST, #ARGV, 2 do
  if not int(ARGV[i]) or not ARGV[i + 1] then return bad_args('ingest_payload') end
end
local device_key = keys.device(device)

-- The device's chat: the device mapping, else the device id itself. A new transcript starts the
-- device's next chat: its index 1 when that chat is past index 1 or has ended, or a ParticipantJoined
-- once that chat has ended. The next chat's session id is one never used before: `<device>~<now_ms>`
-- (a counter would start over once its key expired, and repeat (sessionId, index) pairs). The first
-- chat keeps the device id, which stays taken (its ended marker is renewed here) while the device has
-- recent chats, so late pushes of an ended chat answer `ended`.
local function device_chat(now)
  local current = redis.call('GET', device_key) or device
  local ended = redis.call('EXISTS', keys.ended(current)) == 1
  local cursor = tonumber(redis.call('HGET', keys.session(current), 'cursor') or '0')
  local starts = false
  for i = REST, #ARGV, 2 do
    if int(ARGV[i]) == 1 and (ended or cursor > 1) then starts = true; break end
    if ended then
      local ok, event = pcall(cjson.decode, ARGV[i + 1])
      if ok and type(event) == 'table' and event.type == 'ParticipantJoined' then starts = true; break end
    end
  end
  if not starts then return current end
  if redis.call('EXISTS', keys.session(device), keys.ended(device)) == 0 then return device end
  redis.call('PEXPIRE', keys.ended(device), CFG_STATE_TTL_MS)
  local next_sid = device .. '~' .. now
  while redis.call('EXISTS', keys.session(next_sid), keys.ended(next_sid)) > 0 do
    now = now + 1
    next_sid = device .. '~' .. now
  end
  return next_sid
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

if sid == '' then sid = device_chat(now_ms) end
if redis.call('EXISTS', keys.ended(sid)) == 1 then return 'ended' end

local fields = {'deviceId', device}
if chat_ended then fields[#fields + 1] = 'end'; fields[#fields + 1] = 'chatEnded' end
if alias ~= '' then fields[#fields + 1] = 'alias'; fields[#fields + 1] = alias end
fields[#fields + 1] = 'mode'; fields[#fields + 1] = 'payload'
local state = redis.call('HMGET', keys.session(sid), 'cursor', 'skipped', 'gen')
local cursor = tonumber(state[1] or '0')
local staged_key = keys.staged(sid)
local fresh, missed = 0, 0
local outcome = nil
for i = REST, #ARGV, 2 do
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
if fresh == 0 and not chat_ended then return outcome or 'duplicate' end
redis.call('PEXPIRE', staged_key, CFG_STATE_TTL_MS)
-- The push may fill a gap: due now, not when the gap's wait ends (a worker holding the chat sees
-- the push through `gen` when it commits).
if redis.call('EXISTS', keys.lease(sid)) == 0 then redis.call('ZADD', DIRTY, 'LT', now_ms, sid) end
store_push(sid, device, fields, now_ms, job_id, state[3] or '0')
return outcome or 'queued'
