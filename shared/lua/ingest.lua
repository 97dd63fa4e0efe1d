-- Store one classified push in a single round trip. This runs for every push GMS sends, with GMS
-- waiting for our reply: keep it to the commands that make the push durable and deduplicated.
-- (Pushes are counted by outcome in the ingress process, not here.)
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

if sid == '' then
  sid = redis.call('GET', device_key) or (kind == 'p' and device or '')  -- a payload needs a key
end

if sid == '' or (kind == 'w' and redis.call('EXISTS', P .. 'ended:' .. sid) == 1) then
  -- No chat to refresh: surface the push as device.wakeup.
  local text = kind == 'w' and ARGV[9] or cjson.encode({deviceId = device, text = 'PUSH-NOTIFICATION'})
  redis.call('RPUSH', WAKEUPS, text)
  redis.call('PEXPIRE', WAKEUPS, session_ttl)
  ensure_drain(job_id, now, marker_ttl)
  return 'wakeup'
end

if kind ~= 'w' and redis.call('EXISTS', P .. 'ended:' .. sid) == 1 then return 'ended' end

local skey = P .. 'session:' .. sid
local fields = {'deviceId', device}

if kind == 't' then
  local position, attempt = ARGV[9], ARGV[10]
  if not redis.call('SET', P .. 'dup:' .. sid .. ':' .. position .. ':' .. attempt, '1', 'NX', 'PX', dedupe_ttl) then
    return 'duplicate'
  end
  if ARGV[11] ~= '' then fields[#fields + 1] = 'userId'; fields[#fields + 1] = ARGV[11] end
  if ARGV[12] ~= '' then fields[#fields + 1] = 'secureKey'; fields[#fields + 1] = ARGV[12] end
  if position == '-1' then
    fields[#fields + 1] = 'end'; fields[#fields + 1] = 'removed'
  elseif tonumber(position) < tonumber(redis.call('HGET', skey, 'cursor') or '0') then
    -- Announces events that a refresh, started after this trigger was computed, already fetched.
    redis.call('HSET', skey, unpack(fields))
    return 'covered'
  end
elseif kind == 'p' then
  if ARGV[9] == '1' then fields[#fields + 1] = 'end'; fields[#fields + 1] = 'chatEnded' end
  if ARGV[10] ~= '' then fields[#fields + 1] = 'alias'; fields[#fields + 1] = ARGV[10] end
  fields[#fields + 1] = 'mode'; fields[#fields + 1] = 'payload'
  local cursor = tonumber(redis.call('HGET', skey, 'cursor') or '0')
  local staged_key = P .. 'staged:' .. sid
  local fresh = 0
  for i = 11, #ARGV, 2 do
    if tonumber(ARGV[i]) >= cursor then
      fresh = fresh + redis.call('HSETNX', staged_key, ARGV[i], ARGV[i + 1])
    end
  end
  if fresh == 0 and ARGV[9] ~= '1' then return 'duplicate' end
  redis.call('PEXPIRE', staged_key, session_ttl)
end

-- `gen` lets a worker's commit see pushes that arrived while it was refreshing.
redis.call('HSET', skey, unpack(fields))
redis.call('HINCRBY', skey, 'gen', 1)
redis.call('PEXPIRE', skey, session_ttl)
redis.call('SET', device_key, sid, 'PX', session_ttl)
mark_dirty(sid, now)
ensure_drain(job_id, now, marker_ttl)
return 'queued'
