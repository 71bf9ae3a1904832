-- Adds or refreshes one presence entry, and announces it.
--
-- KEYS[1]  the channel's presence hash: client id -> entry JSON
-- KEYS[2]  the channel's presence expiry set: client id scored by its expiry time (ms)
-- ARGV[1]  client id
-- ARGV[2]  entry JSON
-- ARGV[3]  presence TTL in ms
-- ARGV[4]  the pub/sub channel of the channel
-- ARGV[5]  '1' to publish a join event
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
if ARGV[5] == '1' then
  redis.call('PUBLISH', ARGV[4], '{"k":"j","p":' .. ARGV[2] .. '}')
end
return 1
