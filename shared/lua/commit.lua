-- Deliver a chat's events to the sinks and advance its cursor in one transaction, if we still hold
-- its lease (the fencing check: a worker whose lease expired must not deliver).
-- ARGV: sid, token, now_ms, device, cursor, alias, end_reason, gen, session_ttl_ms, ended_ttl_ms,
--       stream_maxlen, stream_ttl_ms, sinks, job_base, batch_max, webhook_keys_ttl_ms,
--       again_at_ms ('' none: done unless a push arrived meanwhile), gap_since_ms ('' no gap), n_events,
--       then n_events triples (index, type, json), then staged indexes to drop.
local sid, token, now, device = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local cursor, alias, reason, gen = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local session_ttl, ended_ttl, maxlen, stream_ttl = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local sinks, job_base, batch_max, wh_ttl = tonumber(ARGV[13]), ARGV[14], tonumber(ARGV[15]), ARGV[16]
local again_at, gap_since = ARGV[17], ARGV[18]
local n = tonumber(ARGV[19])
local lease = P .. 'lease:' .. sid
if redis.call('GET', lease) ~= token then
  count('commit_fenced')
  return 0
end
local skey, staged = P .. 'session:' .. sid, P .. 'staged:' .. sid
local stream = P .. 'events:' .. device
local items = {}
local first = 20
for i = first, first + 3 * n - 1, 3 do
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'type', ARGV[i + 1], 'sessionId', sid,
    'index', ARGV[i], 'data', ARGV[i + 2])
  table.insert(items, 'E' .. cursor .. '\t' .. device .. '\t' .. ARGV[i + 2])
end
if n > 0 then count('events_delivered', n) end
for i = first + 3 * n, #ARGV do redis.call('HDEL', staged, ARGV[i]) end

if reason ~= '' then
  local data = cjson.encode({deviceId = device, sessionId = sid, reason = reason})
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'type', 'chat.ended', 'sessionId', sid,
    'data', data)
  table.insert(items, 'X{"type":"chat.ended","timestamp":"' .. iso(now):sub(1, 19) .. 'Z","data":'
    .. data .. '}')
  -- Forget the credentials at once; only the ended marker remains (it has a TTL).
  redis.call('DEL', skey, staged)
  redis.call('SET', P .. 'ended:' .. sid, reason, 'PX', ended_ttl)
  if redis.call('GET', P .. 'device:' .. device) == sid then redis.call('DEL', P .. 'device:' .. device) end
  redis.call('ZREM', DIRTY, sid)
  count('sessions_ended_' .. reason)
else
  local fields = {'cursor', cursor, 'retries', '0'}
  if alias ~= '' then table.insert(fields, 'alias'); table.insert(fields, alias) end
  if gap_since ~= '' then
    table.insert(fields, 'gap_since'); table.insert(fields, gap_since)
  else
    redis.call('HDEL', skey, 'gap_since')
  end
  redis.call('HSET', skey, unpack(fields))
  redis.call('PEXPIRE', skey, session_ttl)
  if (redis.call('HGET', skey, 'gen') or '') ~= gen then
    redis.call('ZADD', DIRTY, now, sid)  -- a push arrived while we worked: go again at once
  elseif again_at ~= '' then
    redis.call('ZADD', DIRTY, tonumber(again_at), sid)
  else
    redis.call('ZREM', DIRTY, sid)
  end
end
redis.call('PEXPIRE', stream, stream_ttl)
fan_out(sid, items, sinks, job_base, now, batch_max, wh_ttl)
redis.call('DEL', lease)
return 1
