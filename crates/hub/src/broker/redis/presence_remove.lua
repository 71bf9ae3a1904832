-- Removes one presence entry; announces the leave if it existed.
--
-- KEYS[1], KEYS[2]  as in presence_add.lua
-- ARGV[1]  client id
-- ARGV[2]  the pub/sub channel of the channel
-- ARGV[3]  '1' to publish a leave event
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[3] == '1' then
  redis.call('PUBLISH', ARGV[2], '{"k":"l","p":' .. entry .. '}')
end
return 1
