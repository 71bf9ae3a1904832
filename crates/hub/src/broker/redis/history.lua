-- Reads a channel's position and, unless ARGV[1] is 0, its history, atomically.
--
-- KEYS[1]  the channel's stream hash (see publish.lua)
-- KEYS[2]  the channel's history list
-- ARGV[1]  1 to return the history entries, l for the newest entry only (the latest value
--          sent on subscribe, read in the same step as the position), 0 for the position only
-- ARGV[2]  a fresh epoch, used when the stream does not exist yet
-- ARGV[3]  TTL of the stream hash in ms
--
-- Returns {epoch, offset, now (ms), entries}. Entries carry their expiry time ("x"); the
-- caller drops the expired ones.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  -- Created on read as on publish, so that a subscriber and the next publisher agree on the
  -- epoch.
  epoch = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0, 't', now)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local offset = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')

local entries = {}
if ARGV[1] == '1' then
  entries = redis.call('LRANGE', KEYS[2], 0, -1)
elseif ARGV[1] == 'l' then
  entries = redis.call('LRANGE', KEYS[2], -1, -1)
end
return {epoch, offset, now, entries}
