-- PUT /sessions/{sid}: store a chat's credentials and pull its transcript once.
-- ARGV: sid, device, user_id, secure_key, alias, service, now_ms, job_id, session_ttl_ms, marker_ttl_ms
local sid, device = ARGV[1], ARGV[2]
local now, job_id, session_ttl, marker_ttl = tonumber(ARGV[7]), ARGV[8], ARGV[9], ARGV[10]
if redis.call('EXISTS', P .. 'ended:' .. sid) == 1 then return 'ended' end
local skey = P .. 'session:' .. sid
local fields = {'deviceId', device, 'userId', ARGV[3], 'secureKey', ARGV[4]}
if ARGV[5] ~= '' then table.insert(fields, 'alias'); table.insert(fields, ARGV[5]) end
if ARGV[6] ~= '' then table.insert(fields, 'service'); table.insert(fields, ARGV[6]) end
redis.call('HSET', skey, unpack(fields))
redis.call('HINCRBY', skey, 'gen', 1)
redis.call('PEXPIRE', skey, session_ttl)
redis.call('SET', P .. 'device:' .. device, sid, 'PX', session_ttl)
mark_dirty(sid, now)
ensure_drain(job_id, now, marker_ttl)
return 'registered'
