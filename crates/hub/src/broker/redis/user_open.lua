-- Counts one more connection of a user for one node incarnation and returns every
-- incarnation's count.
-- KEYS[1]  P:{user:<hex>}:conns  hash: node incarnation -> open connections
-- ARGV[1]  this node's incarnation
-- ARGV[2]  expiry of the hash (ms), refreshed on every open
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('HGETALL', KEYS[1])
