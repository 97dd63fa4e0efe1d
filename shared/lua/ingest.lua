-- Store one classified push in a single round trip.
-- ARGV: kind ('t' trigger, 'p' payload, 'w' wake-up), device, session ('' unknown), now_ms, job_id,
--       session_ttl_ms, dedupe_ttl_ms, marker_ttl_ms, then per kind:
--   t: position, attempt, user_id, secure_key
--   p: chat_ended ('1' or ''), alias, then index/event-json pairs
--   w: wake-up JSON {"deviceId","text"}
-- Returns the outcome: queued | duplicate | covered | ended | wakeup.
local kind, device, sid = ARGV[1], ARGV[2], ARGV[3]
local now, job_id = tonumber(ARGV[4]), ARGV[5]
local session_ttl, dedupe_ttl, marker_ttl = ARGV[6], ARGV[7], ARGV[8]
local device_key = P .. 'device:' .. device

if sid == '' and kind ~= 'p' then
  sid = redis.call('GET', device_key) or ''
end
if sid == '' and kind == 'p' then
  sid = redis.call('GET', device_key) or device  -- no chat named: the device stands for it
end

if sid == '' or (kind == 'w' and redis.call('EXISTS', P .. 'ended:' .. sid) == 1) then
  -- No chat to refresh: surface the push as device.wakeup.
  local text = kind == 'w' and ARGV[9] or cjson.encode({deviceId = device, text = 'PUSH-NOTIFICATION'})
  redis.call('RPUSH', WAKEUPS, text)
  redis.call('PEXPIRE', WAKEUPS, session_ttl)
  ensure_drain(job_id, now, marker_ttl)
  count('push_wakeup')
  return 'wakeup'
end

if redis.call('EXISTS', P .. 'ended:' .. sid) == 1 then
  count('push_after_end')
  return 'ended'
end

local skey = P .. 'session:' .. sid
local fields = {'deviceId', device}

if kind == 't' then
  local position, attempt = ARGV[9], ARGV[10]
  local marker = P .. 'dup:' .. sid .. ':' .. position .. ':' .. attempt
  if not redis.call('SET', marker, '1', 'NX', 'PX', dedupe_ttl) then
    count('push_duplicate')
    return 'duplicate'
  end
  if ARGV[11] ~= '' then table.insert(fields, 'userId'); table.insert(fields, ARGV[11]) end
  if ARGV[12] ~= '' then table.insert(fields, 'secureKey'); table.insert(fields, ARGV[12]) end
  if position == '-1' then table.insert(fields, 'end'); table.insert(fields, 'removed') end
  redis.call('HSET', skey, unpack(fields))
  redis.call('PEXPIRE', skey, session_ttl)
  redis.call('SET', device_key, sid, 'PX', session_ttl)
  if position ~= '-1' then
    local cursor = tonumber(redis.call('HGET', skey, 'cursor') or '0')
    if tonumber(position) < cursor then
      -- Announces events a refresh that started after this trigger was computed already fetched.
      count('push_covered')
      return 'covered'
    end
  end
  count('push_trigger')
elseif kind == 'p' then
  if ARGV[9] == '1' then table.insert(fields, 'end'); table.insert(fields, 'chatEnded') end
  if ARGV[10] ~= '' then table.insert(fields, 'alias'); table.insert(fields, ARGV[10]) end
  local cursor = tonumber(redis.call('HGET', skey, 'cursor') or '0')
  local staged_key = P .. 'staged:' .. sid
  local fresh = 0
  for i = 11, #ARGV, 2 do
    if tonumber(ARGV[i]) >= cursor then
      fresh = fresh + redis.call('HSETNX', staged_key, ARGV[i], ARGV[i + 1])
    end
  end
  table.insert(fields, 'mode'); table.insert(fields, 'payload')
  redis.call('HSET', skey, unpack(fields))
  redis.call('PEXPIRE', skey, session_ttl)
  if fresh > 0 then redis.call('PEXPIRE', staged_key, session_ttl) end
  redis.call('SET', device_key, sid, 'PX', session_ttl)
  if fresh == 0 and ARGV[9] ~= '1' then
    count('push_duplicate')
    return 'duplicate'
  end
  count('push_payload')
else
  count('push_wakeup_refresh')
end

-- `gen` lets a worker's commit see pushes that arrived while it was refreshing.
redis.call('HINCRBY', skey, 'gen', 1)
redis.call('PEXPIRE', skey, session_ttl)
mark_dirty(sid, now)
ensure_drain(job_id, now, marker_ttl)
return 'queued'
