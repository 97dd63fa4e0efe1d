-- PUT /sessions/{sid}: store a chat's credentials and pull its transcript (from the cursor) once.
if redis.call('EXISTS', keys.ended(sid)) == 1 then return 'ended' end
local skey, ckey = keys.session(sid), keys.credentials(sid)
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
redis.call('SET', keys.device(device), sid, 'PX', CFG_STATE_TTL_MS)
redis.call('ZREM', PARKED, sid)
mark_dirty(sid, now_ms)
ensure_drain(job_id, now_ms)
return 'registered'
