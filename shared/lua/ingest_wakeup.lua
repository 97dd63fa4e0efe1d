-- Store a wake-up push (`body` is {"deviceId","text"}): emitted as device.wakeup unless the device is in
-- a live chat, which it then makes due (the wake-up may announce new events).
local sid = redis.call('GET', keys.device(device)) or ''
if sid == '' or redis.call('EXISTS', keys.ended(sid)) == 1 then return queue_wakeup(body, job_id, now_ms) end
store_push(sid, device, {'deviceId', device}, now_ms, job_id)
return 'queued'
