-- Moves a channel whose stream regressed to a new epoch, atomically, once: the first node
-- that notices moves it, the others find it moved already.
--
-- A promoted replica may lack publications the old master acknowledged (replication is
-- asynchronous); continuing the epoch would hand out their offsets again for other
-- publications. A new epoch makes every node and client start over explicitly.
--
-- KEYS[1]  the channel's stream hash (see publish.lua)
-- KEYS[2]  the channel's history list
-- ARGV[1]  the epoch that regressed
-- ARGV[2]  a fresh epoch
-- ARGV[3]  TTL of the stream hash in ms
--
-- Returns {epoch, offset} after the move.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local epoch = redis.call('HGET', KEYS[1], 'e')
if (not epoch) or epoch == ARGV[1] then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0, 't', now)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
return {epoch, offset}
