-- Appends one publication to a channel's stream, atomically.
--
-- KEYS[1]  the channel's stream hash: e (epoch), o (last offset), t (time of the last publish, ms)
-- KEYS[2]  the channel's history list, oldest first
-- ARGV[1]  the tail of the publication's JSON after its offset: ,"f":<from>[,"y":<key>],"d":<data>}
-- ARGV[2]  history size (0: keep none)
-- ARGV[3]  history TTL in ms
-- ARGV[4]  a fresh epoch, used when the stream does not exist or lost its history
-- ARGV[5]  the pub/sub channel of the channel
-- ARGV[6]  TTL of the stream hash in ms
--
-- Returns {epoch, offset}.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local size = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])

local epoch = redis.call('HGET', KEYS[1], 'e')
if epoch then
  -- History should still exist (kept, and younger than its TTL) but is gone: the data was
  -- lost (eviction, failover without replication). Offsets restarting from a lost history
  -- would be unverifiable, so a new epoch starts.
  local offset = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
  local last = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
  if size > 0 and offset > 0 and now - last < ttl and redis.call('EXISTS', KEYS[2]) == 0 then
    epoch = false
  end
end
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end

local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
redis.call('HSET', KEYS[1], 't', now)
redis.call('PEXPIRE', KEYS[1], ARGV[6])

if size > 0 then
  redis.call('RPUSH', KEYS[2], '{"x":' .. (now + ttl) .. ',"o":' .. offset .. ARGV[1])
  redis.call('LTRIM', KEYS[2], -size, -1)
  redis.call('PEXPIRE', KEYS[2], ttl)
end

redis.call('PUBLISH', ARGV[5], '{"k":"p","e":"' .. epoch .. '","o":' .. offset .. ARGV[1])
return {epoch, offset}
