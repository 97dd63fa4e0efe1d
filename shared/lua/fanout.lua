-- Webhook fan-out ---------------------------------------------------------------------------------
-- Outbox items: 'E<nextPosition>\t<deviceId>\t<event json>' for a transcript event, 'X<body>' for a
-- complete delivery body (chat.ended, device.wakeup). Only the head delivery of a chat is in flight
-- per sink; consecutive events are batched into one chat.events delivery whose bytes are fixed here,
-- so every retry carries the same webhook-id and body. Due deliveries sit in DELIVERIES by due time.
local DELIVERIES = P .. 'deliveries'

local function start_delivery(sink, sid, id, ms, batch_max, keys_ttl_ms)
  local okey = P .. 'outbox:' .. sink .. ':' .. sid
  local items = redis.call('LRANGE', okey, 0, batch_max - 1)
  if #items == 0 then return 0 end
  local body, taken
  if items[1]:sub(1, 1) == 'X' then
    body, taken = items[1]:sub(2), 1
  else
    local events, next_pos, device = {}, 0, ''
    for _, item in ipairs(items) do
      if item:sub(1, 1) ~= 'E' then break end
      local tab1 = item:find('\t', 2, true)
      local tab2 = item:find('\t', tab1 + 1, true)
      next_pos = math.max(next_pos, tonumber(item:sub(2, tab1 - 1)))
      device = item:sub(tab1 + 1, tab2 - 1)
      table.insert(events, item:sub(tab2 + 1))
    end
    taken = #events
    body = '{"type":"chat.events","timestamp":"' .. iso(ms):sub(1, 19) .. 'Z","data":{"deviceId":'
      .. cjson.encode(device) .. ',"sessionId":' .. cjson.encode(sid) .. ',"nextPosition":' .. next_pos
      .. ',"events":[' .. table.concat(events, ',') .. ']}}'
  end
  redis.call('LTRIM', okey, taken, -1)
  local dkey = P .. 'delivery:' .. id
  redis.call('HSET', dkey, 'body', body, 'sink', sink, 'sid', sid, 'attempts', 0, 'created', ms)
  redis.call('PEXPIRE', dkey, keys_ttl_ms)
  redis.call('SET', P .. 'inflight:' .. sink .. ':' .. sid, id, 'PX', keys_ttl_ms)
  redis.call('ZADD', DELIVERIES, ms, id)
  count('webhook_deliveries_created')
  return 1
end

-- Append items for every sink and start a delivery where none is in flight.
local function fan_out(sid, items, sinks, id_base, ms, batch_max, keys_ttl_ms)
  if #items == 0 then return end
  for sink = 0, sinks - 1 do
    local okey = P .. 'outbox:' .. sink .. ':' .. sid
    redis.call('RPUSH', okey, unpack(items))
    redis.call('PEXPIRE', okey, keys_ttl_ms)
    if redis.call('EXISTS', P .. 'inflight:' .. sink .. ':' .. sid) == 0 then
      start_delivery(sink, sid, id_base .. '-' .. sink, ms, batch_max, keys_ttl_ms)
    end
  end
end
