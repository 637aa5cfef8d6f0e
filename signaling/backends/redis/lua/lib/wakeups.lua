-- Wake-ups, as Lua writes them (the format and the Python side: wakeups.py).
-- On one Redis a script PUBLISHes them itself; on a cluster (SHARDED) a script may not reach a channel
-- of another slot, so it leaves them in WAKES, {instance, message} pairs, for the backend to SPUBLISH.
-- A wake-up for the calling instance itself (ME) is left in WAKES too: its reply carries it home.
local function notify(instance, message)
  if SHARDED or instance == ME then
    WAKES[#WAKES + 1] = {instance, message}
  else
    redis.call('PUBLISH', 'sig:wake:{' .. instance .. '}', message)
  end
end

-- "M <room> <peer>": that peer's mailbox changed. On one Redis a holder's wake-ups arrive in the order
-- of their seqs, so the new envelopes ride along ("M <room> <peer> <envelopes, one per line>") and the
-- woken poll answers without a second round trip; on a cluster two wake-ups may cross, so it looks.
local function mailbox_changed(instance, room, id, envelopes)
  local message = 'M ' .. room .. ' ' .. id
  if envelopes and not SHARDED then message = message .. ' ' .. table.concat(envelopes, '\n') end
  notify(instance, message)
end

-- "S <room> <peer> <poll id>": that held poll is superseded by a newer poll of its peer
local function superseded(instance, room, id, poll)
  notify(instance, 'S ' .. room .. ' ' .. id .. ' ' .. poll)
end
