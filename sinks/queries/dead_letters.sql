-- name: dead_letters
-- group: store
-- what: messages no stage could use, with the reason, newest first
-- param: limit UInt32 = 100   at most this many
SELECT ts, source_topic, source_partition, source_offset, stage, reason, length(raw) AS bytes
FROM dead_letters FINAL ORDER BY ts DESC LIMIT {limit:UInt32}
