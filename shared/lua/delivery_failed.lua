-- A webhook attempt failed. Fenced by the lease token: a worker that lost its lease changes nothing.
-- ARGV: id, token, retry_at_ms ('' = dead-lettered: the RQ failed registry holds it now)
-- Returns the attempts made so far, or -1 if fenced.
local id, token, retry_at = ARGV[1], ARGV[2], ARGV[3]
if #ARGV ~= 3 or (retry_at ~= '' and not int(retry_at)) then return bad_args('delivery_failed') end
local dkey = P .. 'delivery:' .. id
if redis.call('HGET', dkey, 'token') ~= token then return -1 end
local attempts = redis.call('HINCRBY', dkey, 'attempts', 1)
redis.call('HDEL', dkey, 'token')
if retry_at == '' then
  redis.call('ZREM', DELIVERIES, id)
  redis.call('HSET', dkey, 'dead', 1)
  count('webhook_dead_lettered')
else
  redis.call('ZADD', DELIVERIES, int(retry_at), id)
  count('webhook_retried')
end
return attempts
