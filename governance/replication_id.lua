-- replication_id.lua — the stamp of an agent's ready marker (docs/architecture.md §4.10); prepended to
-- governed_call.lua and rebuild_counters.lua.
-- replication_id() → the master_replid of the Redis server running the script (INFO replication: about 3 µs). A
-- primary keeps it while its data is continuous; a replica promoted by a failover (replication is asynchronous: it
-- may lack the last writes) and a restarted server start a new one, so a marker written before reads as another's: the
-- counters are rebuilt from the database, as after a flush. Redis also starts a new id when a primary's first
-- replica attaches, or repl-backlog-ttl (an hour) after its last one left: one rebuild more, as at the marker's daily
-- expiry. A server whose INFO has no master_replid fails the script loudly rather than miss a failover.
local function replication_id()
  local id = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
  if not id then
    error('INFO replication has no master_replid: the ready marker needs it (governance/replication_id.lua)')
  end
  return id
end
