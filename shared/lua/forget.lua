-- DELETE /sessions/{sid}: forget a chat's credentials and pending work (no chat.ended is emitted).
-- The cursor stays (CHAT_STATE_TTL_S): registering the chat again resumes where it was, so nothing is
-- delivered twice.
local skey = keys.session(sid)
local device = redis.call('HGET', skey, 'deviceId')
if device and redis.call('GET', keys.device(device)) == sid then
  redis.call('DEL', keys.device(device))
end
redis.call('ZREM', DIRTY, sid)
redis.call('ZREM', PARKED, sid)
redis.call('HDEL', skey, 'deviceId', 'end', 'userId', 'secureKey')  -- the last two: before the split
return redis.call('DEL', keys.credentials(sid), keys.staged(sid))
