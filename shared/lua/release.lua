-- Give a claimed chat back without delivering.
-- ARGV: sid, token, how, at_ms, max_retries, gen
--   how = 'retry': a refresh failed; due again at at_ms, until max_retries failures in a row
--         (then dropped: Chat Server's resend brings it back).
--   how = 'later': waiting for a gap in payload indexes to fill; due again at at_ms.
--   how = 'park': no credentials yet; PUT /sessions or the next push marks it dirty again.
local sid, token, how, at = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local lease = P .. 'lease:' .. sid
if redis.call('GET', lease) ~= token then
  count('commit_fenced')
  return 'fenced'
end
redis.call('DEL', lease)
local skey = P .. 'session:' .. sid
if how == 'retry' then
  local failures = redis.call('HINCRBY', skey, 'retries', 1)
  if failures > tonumber(ARGV[5]) then
    redis.call('HSET', skey, 'retries', '0')
    redis.call('ZREM', DIRTY, sid)
    count('refresh_gave_up')
    return 'gave_up'
  end
  redis.call('ZADD', DIRTY, at, sid)
  count('refresh_retried')
  return 'retry'
elseif how == 'later' then
  redis.call('ZADD', DIRTY, at, sid)
  return 'later'
end
if (redis.call('HGET', skey, 'gen') or '') == ARGV[6] then redis.call('ZREM', DIRTY, sid) end
count('refresh_parked')
return 'park'
