-- Takes back one connection of a user counted by user_open.lua.
-- KEYS[1]  P:{user:<hex>}:conns
-- ARGV[1]  this node's incarnation
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return n
