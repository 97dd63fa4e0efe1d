-- A webhook delivery succeeded (or an operator skipped it): drop it and start the chat's next one.
-- ARGV: sink, sid, delivery_id, next_job_id, now_ms, batch_max, webhook_keys_ttl_ms
local sink, sid, id = ARGV[1], ARGV[2], ARGV[3]
local inflight = P .. 'inflight:' .. sink .. ':' .. sid
if redis.call('GET', inflight) ~= id then return 0 end
redis.call('DEL', inflight, P .. 'delivery:' .. id)
start_delivery(sink, sid, ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7])
return 1
