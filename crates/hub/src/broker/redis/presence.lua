-- Refreshes this node's presence entries of one channel, removes expired entries (those of
-- nodes that died) with a leave event each, and returns the remaining entries.
--
-- KEYS[1], KEYS[2]  as in presence_add.lua
-- ARGV[1]  presence TTL in ms
-- ARGV[2]  the pub/sub channel of the channel
-- ARGV[3]  '1' to add entries that are missing (after Redis lost its data), '0' to only
--          extend the ones that exist (an entry removed meanwhile stays removed)
-- ARGV[4], ARGV[5], ...  pairs of client id and entry JSON owned by the calling node
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[1])
local readd = ARGV[3] == '1'

local refreshed = 0
for i = 4, #ARGV, 2 do
  if readd then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  if readd or redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], now + ttl, ARGV[i])
    refreshed = refreshed + 1
  end
end
if refreshed > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end

local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, client in ipairs(expired) do
  local entry = redis.call('HGET', KEYS[1], client)
  if entry then
    redis.call('HDEL', KEYS[1], client)
    -- Entries record whether their channel announces joins and leaves.
    if string.sub(entry, 1, 10) == '{"a":true,' then
      redis.call('PUBLISH', ARGV[2], '{"k":"l","p":' .. entry .. '}')
    end
  end
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
return redis.call('HVALS', KEYS[1])
