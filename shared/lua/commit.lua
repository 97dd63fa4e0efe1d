-- Deliver a chat's events to the sinks and advance its cursor in one transaction, if we still hold
-- its lease (the fencing check: a worker whose lease expired must not deliver).
-- A large outcome comes as several chunks, each one call and atomic: every chunk but the last moves
-- the cursor to just past its events and renews the lease; the last one also settles the chat (alias,
-- end, what is due next) and releases the lease. A crash between chunks loses and repeats nothing.
-- `final`: the last chunk (else another follows); `again_at_ms` ('' none): when the chat is due again,
-- else it is done unless a push arrived meanwhile; `gap_since_ms` ('' no gap): when the gap at the
-- cursor was first seen. At most CFG_COMMIT_CHUNK_EVENTS events per call (unpack's limit).
-- Payload chats also keep, in their session hash: `skipped`, the index ranges the cursor passed
-- without delivering them ("lo-hi,lo-hi": a gap whose wait ended), so that an event of theirs that
-- comes later is answered `late` (ingest.lua), not `duplicate`; and `gaps`, when each gap above the
-- one at the cursor was first seen ("index:ms,...": each gap waits from then, workers/chat.py).
local now, reason, n, first = now_ms, end_reason, n_events, REST
if n > CFG_COMMIT_CHUNK_EVENTS or #ARGV < first + 3 * n - 1 then return bad_args('commit') end
for i = first, first + 3 * n - 1, 3 do
  if not int(ARGV[i]) then return bad_args('commit') end
end
for i = first + 3 * n, #ARGV do
  if not int(ARGV[i]) then return bad_args('commit') end
end
local lease = keys.lease(sid)
if redis.call('GET', lease) ~= token then
  count('commit_fenced')
  return 0
end

local skey, ckey, staged = keys.session(sid), keys.credentials(sid), keys.staged(sid)
-- One read for everything below: the payload bookkeeping, then the alias ordering.
local payload = redis.call('HMGET', skey, 'mode', 'cursor', 'skipped', 'gaps', 'alias_key', 'aliases')
local book = {}  -- payload bookkeeping fields to write with the cursor
if payload[1] == 'payload' then
  local from, done = tonumber(payload[2] or '0'), {}
  local late = 0
  for i = first, first + 3 * n - 1, 3 do done[#done + 1] = tonumber(ARGV[i]) end
  for i = first + 3 * n, #ARGV do
    local index = tonumber(ARGV[i])
    if index < from then late = late + 1 end  -- staged after a commit had skipped its gap
    done[#done + 1] = index
  end
  if late > 0 then count('payload_late', late) end
  table.sort(done)
  local ranges, nxt = {}, math.max(from, 1)
  for _, index in ipairs(done) do
    if index >= cursor then break end
    if index > nxt then ranges[#ranges + 1] = {nxt, index - 1} end
    if index >= nxt then nxt = index + 1 end
  end
  if cursor > nxt then ranges[#ranges + 1] = {nxt, cursor - 1} end
  if #ranges > 0 then
    count('payload_gaps_skipped', #ranges)
    local all = {}
    for lo, hi in string.gmatch(payload[3] or '', '(%d+)-(%d+)') do all[#all + 1] = {tonumber(lo), tonumber(hi)} end
    for _, range in ipairs(ranges) do all[#all + 1] = range end
    -- Bounded: past 32 ranges the two oldest merge, which can only turn a duplicate into `late`.
    while #all > 32 do
      all[2][1] = all[1][1]
      table.remove(all, 1)
    end
    local out = {}
    for i, range in ipairs(all) do out[i] = range[1] .. '-' .. range[2] end
    book[#book + 1] = 'skipped'; book[#book + 1] = table.concat(out, ',')
  end
end
local items = {}
for i = first, first + 3 * n - 1, 3 do
  stream_add(device, 'type', ARGV[i + 1], 'sessionId', sid, 'index', ARGV[i], 'data', ARGV[i + 2])
  items[#items + 1] = 'E' .. cursor .. '\t' .. device .. '\t' .. ARGV[i + 2]
end
if n > 0 then count('events_delivered', n) end
for i = first + 3 * n, #ARGV do redis.call('HDEL', staged, ARGV[i]) end

if not final then
  redis.call('HSET', skey, 'cursor', cursor, unpack(book))
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
  redis.call('SET', keys.ended(sid), reason, 'PX', CFG_STATE_TTL_MS)
  if redis.call('GET', keys.device(device)) == sid then redis.call('DEL', keys.device(device)) end
  redis.call('ZREM', DIRTY, sid)
  count('sessions_ended_' .. reason)
else
  local fields = {'cursor', cursor, 'retries', '0'}
  take_alias(fields, payload[5], alias, 2 * cursor + 1)
  if alias ~= '' then fields[#fields + 1] = 'aliases'; fields[#fields + 1] = remember(payload[6], alias) end
  for _, value in ipairs(book) do fields[#fields + 1] = value end
  if gap_since_ms then
    fields[#fields + 1] = 'gap_since'; fields[#fields + 1] = gap_since_ms
    -- The gaps above the one at the cursor, each with when it was first seen (now, if it is new).
    local seen, later, last = {}, {}, nil
    for index, at in string.gmatch(payload[4] or '', '(%d+):(%d+)') do seen[tonumber(index)] = at end
    local held = redis.call('HKEYS', staged)
    for i, index in ipairs(held) do held[i] = tonumber(index) end
    table.sort(held)
    for _, index in ipairs(held) do
      -- (One below the cursor was staged while this commit skipped its gap: the next claim drops it.)
      if index >= cursor then
        if last and index > last + 1 then later[#later + 1] = (last + 1) .. ':' .. (seen[last + 1] or now) end
        last = index
      end
    end
    if #later > 0 then
      fields[#fields + 1] = 'gaps'; fields[#fields + 1] = table.concat(later, ',')
    else
      redis.call('HDEL', skey, 'gaps')
    end
    redis.call('HDEL', skey, 'refused')
  else
    redis.call('HDEL', skey, 'gap_since', 'gaps', 'refused')  -- GMS answered: no alias is in doubt now
  end
  redis.call('HSET', skey, unpack(fields))
  redis.call('PEXPIRE', skey, CFG_STATE_TTL_MS)
  redis.call('PEXPIRE', ckey, CFG_CREDS_TTL_MS)
  if (redis.call('HGET', skey, 'gen') or '') ~= gen then
    redis.call('ZADD', DIRTY, now, sid)  -- a push arrived while we worked: go again at once
  elseif again_at_ms then
    redis.call('ZADD', DIRTY, again_at_ms, sid)
  else
    redis.call('ZREM', DIRTY, sid)
  end
end
redis.call('ZREM', PARKED, sid)
fan_out(sid, items, id_base, now)
redis.call('DEL', lease)
return 1
