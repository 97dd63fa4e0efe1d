-- PUT /sessions/{sid}: store a chat's credentials and pull its transcript (from the cursor) once.
-- ARGV: sid, device, user_id, secure_key, alias, service, now_ms, job_id
local sid, device, user_id, secure_key = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local alias, service, now, job_id = ARGV[5], ARGV[6], int(ARGV[7]), ARGV[8]
if #ARGV ~= 8 or not now or sid == '' or device == '' or job_id == '' then return bad_args('register') end
if redis.call('EXISTS', P .. 'ended:' .. sid) == 1 then return 'ended' end
local skey, ckey = P .. 'session:' .. sid, P .. 'creds:' .. sid
redis.call('HSET', ckey, 'userId', user_id, 'secureKey', secure_key)
redis.call('PEXPIRE', ckey, CFG_CREDS_TTL_MS)
local fields = {'deviceId', device}
-- The app's alias (from Request Chat) is the oldest source: it never replaces one a trigger or a
-- Refresh response gave.
take_alias(fields, redis.call('HGET', skey, 'alias_key'), alias, -1)
if service ~= '' then fields[#fields + 1] = 'service'; fields[#fields + 1] = service end
redis.call('HSET', skey, unpack(fields))
redis.call('HINCRBY', skey, 'gen', 1)
redis.call('PEXPIRE', skey, CFG_STATE_TTL_MS)
redis.call('SET', P .. 'device:' .. device, sid, 'PX', CFG_STATE_TTL_MS)
redis.call('ZREM', PARKED, sid)
mark_dirty(sid, now)
ensure_drain(job_id, now)
return 'registered'
