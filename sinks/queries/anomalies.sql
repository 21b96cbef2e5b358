-- name: anomalies
-- group: store
-- what: anomalies raised in the last since_s seconds, firing and resolved
-- param: since_s UInt32 = 86400   look back this many seconds
SELECT id, kind, state, toDateTime(started_at) AS since, toDateTime(window_end) AS seen_at, message
FROM anomalies FINAL
WHERE ts >= now64(3) - toIntervalSecond({since_s:UInt32})
ORDER BY started_at, id, state = 'resolved'
