-- Give a claimed chat back without delivering.
-- ARGV: sid, token, how, at_ms, gen
--   how = 'retry': a refresh failed; due again at at_ms (the caller's backoff grows with `retries`).
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
  -- Never dropped: a Refresh that timed out on our side may still have reached GMS and acknowledged
  -- the triggers, so Chat Server's resend cannot be relied on to bring the chat back.
  redis.call('HINCRBY', skey, 'retries', 1)
  redis.call('ZADD', DIRTY, at, sid)
  count('refresh_retried')
  return 'retry'
elseif how == 'later' then
  redis.call('ZADD', DIRTY, at, sid)
  return 'later'
end
if (redis.call('HGET', skey, 'gen') or '') == ARGV[5] then redis.call('ZREM', DIRTY, sid) end
count('refresh_parked')
return 'park'
