-- A webhook delivery succeeded (or an operator skipped it): drop it and start the chat's next one.
-- ARGV: id, next_id, now_ms. Returns 1 if a next delivery started.
local id = ARGV[1]
if #ARGV ~= 3 or id == '' or ARGV[2] == '' or not int(ARGV[3]) then return bad_args('delivery_done') end
local dkey = P .. 'delivery:' .. id
local d = redis.call('HMGET', dkey, 'sink', 'sid')
redis.call('ZREM', DELIVERIES, id)
redis.call('DEL', dkey)
if not d[1] then return 0 end
local inflight = P .. 'inflight:' .. d[1] .. ':' .. d[2]
if redis.call('GET', inflight) ~= id then return 0 end
redis.call('DEL', inflight)
count('webhook_delivered')
return start_delivery(d[1], d[2], ARGV[2], int(ARGV[3]))
