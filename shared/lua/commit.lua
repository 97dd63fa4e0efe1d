-- Deliver a chat's events to the sinks and advance its cursor in one transaction, if we still hold
-- its lease (the fencing check: a worker whose lease expired must not deliver).
-- A large outcome comes as several chunks, each one call and atomic: every chunk but the last moves
-- the cursor to just past its events and renews the lease; the last one also settles the chat (alias,
-- end, what is due next) and releases the lease. A crash between chunks loses and repeats nothing.
-- ARGV: sid, token, now_ms, device, cursor, final ('1' the last chunk, '' another follows), alias,
--       end_reason, gen, again_at_ms ('' none: done unless a push arrived meanwhile),
--       gap_since_ms ('' no gap), id_base, n_events, then n_events triples (index, type, json),
--       then staged indexes to drop. At most CFG_COMMIT_CHUNK_EVENTS events per call (unpack's limit).
local sid, token, now, device = ARGV[1], ARGV[2], int(ARGV[3]), ARGV[4]
local cursor, final, alias, reason, gen = int(ARGV[5]), ARGV[6] == '1', ARGV[7], ARGV[8], ARGV[9]
local again_at, gap_since, id_base, n = ARGV[10], ARGV[11], ARGV[12], int(ARGV[13])
local first = 14
if not now or not cursor or not n or n > CFG_COMMIT_CHUNK_EVENTS or device == '' or id_base == '' or #ARGV < first + 3 * n - 1
  or (again_at ~= '' and not int(again_at)) or (gap_since ~= '' and not int(gap_since)) then
  return bad_args('commit')
end
for i = first, first + 3 * n - 1, 3 do
  if not int(ARGV[i]) then return bad_args('commit') end
end
for i = first + 3 * n, #ARGV do
  if not int(ARGV[i]) then return bad_args('commit') end
end
local lease = P .. 'lease:' .. sid
if redis.call('GET', lease) ~= token then
  count('commit_fenced')
  return 0
end

local skey, ckey, staged = P .. 'session:' .. sid, P .. 'creds:' .. sid, P .. 'staged:' .. sid
local items = {}
for i = first, first + 3 * n - 1, 3 do
  stream_add(device, 'type', ARGV[i + 1], 'sessionId', sid, 'index', ARGV[i], 'data', ARGV[i + 2])
  items[#items + 1] = 'E' .. cursor .. '\t' .. device .. '\t' .. ARGV[i + 2]
end
if n > 0 then count('events_delivered', n) end
for i = first + 3 * n, #ARGV do redis.call('HDEL', staged, ARGV[i]) end

if not final then
  redis.call('HSET', skey, 'cursor', cursor)
  redis.call('PEXPIRE', skey, CFG_STATE_TTL_MS)
  redis.call('PEXPIRE', lease, CFG_LEASE_TTL_MS)
  redis.call('ZADD', DIRTY, 'XX', now + CFG_LEASE_TTL_MS, sid)
  fan_out(sid, items, id_base, now)
  return 1
end

if reason ~= '' then
  local data = cjson.encode({deviceId = device, sessionId = sid, reason = reason})
  items[#items + 1] = notice(device, sid, 'chat.ended', data, now)
  -- Forget the credentials at once; only the ended marker remains (it has a TTL).
  redis.call('DEL', skey, ckey, staged)
  redis.call('SET', P .. 'ended:' .. sid, reason, 'PX', CFG_STATE_TTL_MS)
  if redis.call('GET', P .. 'device:' .. device) == sid then redis.call('DEL', P .. 'device:' .. device) end
  redis.call('ZREM', DIRTY, sid)
  count('sessions_ended_' .. reason)
else
  local fields = {'cursor', cursor, 'retries', '0'}
  local state = redis.call('HMGET', skey, 'alias_key', 'aliases')
  take_alias(fields, state[1], alias, 2 * cursor + 1)
  if alias ~= '' then fields[#fields + 1] = 'aliases'; fields[#fields + 1] = remember(state[2], alias) end
  if gap_since ~= '' then
    fields[#fields + 1] = 'gap_since'; fields[#fields + 1] = gap_since
    redis.call('HDEL', skey, 'refused')
  else
    redis.call('HDEL', skey, 'gap_since', 'refused')  -- GMS answered: no alias is in doubt now
  end
  redis.call('HSET', skey, unpack(fields))
  redis.call('PEXPIRE', skey, CFG_STATE_TTL_MS)
  redis.call('PEXPIRE', ckey, CFG_CREDS_TTL_MS)
  if (redis.call('HGET', skey, 'gen') or '') ~= gen then
    redis.call('ZADD', DIRTY, now, sid)  -- a push arrived while we worked: go again at once
  elseif again_at ~= '' then
    redis.call('ZADD', DIRTY, int(again_at), sid)
  else
    redis.call('ZREM', DIRTY, sid)
  end
end
redis.call('ZREM', PARKED, sid)
fan_out(sid, items, id_base, now)
redis.call('DEL', lease)
return 1
