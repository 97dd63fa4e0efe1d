-- What the three ingest scripts share. They run for every push GMS sends, with GMS waiting for our
-- reply: keep them to the commands that make the push durable. (Pushes are counted by outcome in the
-- ingress process; here only payload events that came late.)
--
-- A trigger is never dropped as a repeat: Chat Server sends one per new event, and while no Refresh
-- was processed they all carry the same (notify-position, notify-attempt 0). Every trigger whose
-- position is not below our cursor marks the chat dirty and bumps `gen`: if a Refresh has not started
-- yet, this one is coalesced with it; if one is in flight, its commit sees `gen` moved and runs again.

-- No chat to refresh: surface the push as device.wakeup (emitted by the next claim).
local function queue_wakeup(text, job_id, now)
  redis.call('RPUSH', WAKEUPS, text)
  redis.call('PEXPIRE', WAKEUPS, CFG_STATE_TTL_MS)
  ensure_drain(job_id, now)
  return 'wakeup'
end

-- Record the push on its chat and make the chat due. `gen` lets a worker's commit see pushes that
-- arrived while it was refreshing: `gen` is the stored one when the caller read it already (then one
-- HSET writes it bumped), else nil (HINCRBY).
local function store_push(sid, device, fields, now, job_id, gen)
  local skey = keys.session(sid)
  if gen then
    fields[#fields + 1] = 'gen'; fields[#fields + 1] = (tonumber(gen) or 0) + 1
    redis.call('HSET', skey, unpack(fields))
  else
    redis.call('HSET', skey, unpack(fields))
    redis.call('HINCRBY', skey, 'gen', 1)
  end
  redis.call('PEXPIRE', skey, CFG_STATE_TTL_MS)
  redis.call('SET', keys.device(device), sid, 'PX', CFG_STATE_TTL_MS)
  mark_dirty(sid, now)
  ensure_drain(job_id, now)
end
